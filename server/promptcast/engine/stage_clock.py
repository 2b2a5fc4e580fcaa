"""Per-stage timings of a frame without stopping the GPU between stages.

Timing a stage with the wall clock needs a device sync at its end, and each sync leaves the GPU
idle while Python prepares the next stage (the scheduler step between UNet calls, the decoder's
launch). On CUDA the clock records events on the stream instead: the CPU queues stage after
stage while the GPU runs, and the times are read once, after the frame's pixels came back (the
one sync a frame needs). On the CPU the work is synchronous, and the wall clock is exact.
"""

from __future__ import annotations

import time
from itertools import pairwise

import torch


class StageClock:
    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._events: list[torch.cuda.Event] = []  # on CUDA
        self._times: list[float] = []  # on the CPU

    def mark(self) -> None:
        """The end of one stage and the start of the next, as the device will reach it."""
        if self._cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._events.append(event)
        else:
            self._times.append(time.perf_counter())

    def stages_ms(self) -> list[float]:
        """Milliseconds between consecutive marks. Waits for the device to reach the last."""
        if self._cuda:
            self._events[-1].synchronize()
            return [a.elapsed_time(b) for a, b in pairwise(self._events)]
        return [(b - a) * 1e3 for a, b in pairwise(self._times)]
