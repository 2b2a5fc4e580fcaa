"""Copies between the host and the device (and indexing that would copy) that do not make the
CPU wait for the GPU's queued work more than once a frame.

A copy from pageable host memory to the device may wait for the stream before it starts; one
from the device into pageable memory is staged through a driver buffer, at about half the speed
of a copy into pinned (page-locked) memory. Pinned blocks come from torch's caching host
allocator, which reuses a block only once the copies that used it are done.
"""

from __future__ import annotations

import numpy as np
import torch


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor copied to `device` without waiting for the device's queued work: through
    pinned memory on CUDA."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def to_host(*tensors: torch.Tensor) -> list[np.ndarray]:
    """Device tensors as numpy arrays in host memory, each copied straight into pinned memory on
    CUDA, with one wait for all of them (the frame's one host sync). On the CPU: the tensors'
    own memory."""
    if not tensors or tensors[0].device.type != "cuda":
        return [t.cpu().numpy() for t in tensors]
    pinned = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
    for host, t in zip(pinned, tensors, strict=True):
        host.copy_(t, non_blocking=True)
    torch.cuda.current_stream(tensors[0].device).synchronize()
    return [host.numpy() for host in pinned]


def select_rows(t: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """t[rows] along the first dimension, without a host sync: indexing with a Python list
    copies the index to the device from pageable memory, which waits for the device's queued
    work. A run of consecutive rows (the usual case: every frame of a batch) is a slice, a view;
    any other list goes to the device as to_device sends it."""
    if not rows:
        return t[:0]
    first = rows[0]
    if rows == list(range(first, first + len(rows))):
        return t[first:first + len(rows)]
    return t.index_select(0, to_device(torch.tensor(rows), t.device))
