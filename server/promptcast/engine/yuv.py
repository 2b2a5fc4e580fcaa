"""Frames for a video track as I420 (YUV 4:2:0), made on the render device.

The video encoders (VP8, H.264) take I420. Converting an RGB frame on the CPU (libswscale,
through PyAV's `reformat`) took 2.6 ms at 512 px and 9.8 ms at 1024 px on this project's CPU,
for every frame of every WebRTC session, while the GPU does it in a few small kernels. The
engine converts the frames bound for a video track right after decoding (`--video-convert`), and
the track wraps the planes as they are (0.2 ms at 512 px).

The conversion is libswscale's default for RGB to yuv420p (what the frames went through
before), in the colours browsers assume when they decode: ITU-R BT.601, limited range (Y in
16-235, chroma in 16-240). Its chroma is filtered as libswscale's bilinear scaler does it: the
mean of two columns, and of four rows weighted 1, 3, 3, 1 (tests/engine/test_yuv.py compares
the two).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from av import VideoFrame

from promptcast.engine.model_index import ModelLoadError

# BT.601: rows Y, Cb, Cr of full-range R'G'B' (0-255) -> limited-range offsets from (16, 128, 128)
_Y = (0.299, 0.587, 0.114)
_CB = (-0.299 / 1.772, -0.587 / 1.772, 0.5)
_CR = (0.5, -0.587 / 1.402, -0.114 / 1.402)
_MATRIX = (tuple(c * 219 / 255 for c in _Y),
           tuple(c * 224 / 255 for c in _CB),
           tuple(c * 224 / 255 for c in _CR))  # (3, 3)
_OFFSET = (16.0, 128.0, 128.0)


@functools.cache
def _coefficients(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The matrix (3, 3) and offsets (3,) on `device`, copied there once: a copy from the host
    on every frame would wait for the device's queued work (the decode) each time."""
    return (torch.tensor(_MATRIX, dtype=torch.float32, device=device),
            torch.tensor(_OFFSET, dtype=torch.float32, device=device))


def video_frame(pixels: np.ndarray, yuv: np.ndarray | None) -> VideoFrame:
    """A frame for the video encoders: the engine's I420 planes wrapped as they are (about
    0.2 ms at 512 px on this project's CPU), or, without them, (H, W, 3) uint8 RGB converted
    by libswscale (2.6 ms at 512 px, 9.8 ms at 1024)."""
    if yuv is not None:
        return VideoFrame.from_ndarray(yuv, format="yuv420p")
    return VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format="yuv420p")


def converts_on_device(where: str, device: torch.device) -> bool:
    """Who converts frames for video tracks to I420 (--video-convert): "device": the engine, on
    the render device (on a CPU device, the engine thread); "cpu": the track, on a worker thread
    (libswscale); "auto": the device where it is a GPU, else the CPU."""
    if where not in ("auto", "device", "cpu"):
        raise ModelLoadError(f"--video-convert must be auto, device or cpu, not {where!r}")
    return where == "device" or (where == "auto" and device.type == "cuda")


def i420_from_rgb(frames: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 RGB, H and W even -> (B, H * 3 // 2, W) uint8 I420 on the same device:
    the Y plane's H rows, then the U plane and the V plane, each (H/2, W/2) laid out as H/4 rows
    of W (the layout of PyAV's `VideoFrame.from_ndarray(..., format="yuv420p")`)."""
    b, _, h, w = frames.shape
    assert h % 2 == 0 and w % 2 == 0, "I420 needs an even width and height"
    rgb = frames.float()
    matrix, offset = _coefficients(rgb.device)
    y = torch.einsum("c,bchw->bhw", matrix[0], rgb) + offset[0]  # (B, H, W)
    # Filter the pixels, then apply the matrix: the same as filtering full-size chroma, since
    # the conversion is linear. Chroma row i is rows 2i-1 .. 2i+2 weighted 1, 3, 3, 1 (/ 8),
    # the edge rows repeated: padded rows 2i .. 2i+3. (Slices, not a convolution: cuDNN's
    # benchmark mode would time one on the hot path for each new batch size.)
    pairs = F.avg_pool2d(rgb, (1, 2))  # (B, 3, H, W/2)
    padded = F.pad(pairs, (0, 0, 1, 1), mode="replicate")  # (B, 3, H + 2, W/2)
    tap = [padded[:, :, k:k + h - 1:2] for k in range(4)]  # each (B, 3, H/2, W/2)
    quarter = (tap[0] + tap[3] + 3 * (tap[1] + tap[2])) / 8
    uv = torch.einsum("kc,bchw->bkhw", matrix[1:], quarter) + offset[1:, None, None]  # (B, 2, H/2, W/2)
    planes = torch.cat([y.reshape(b, -1), uv.reshape(b, -1)], dim=1)  # (B, H * W * 3 / 2)
    return planes.round().clamp(0, 255).to(torch.uint8).reshape(b, h * 3 // 2, w)
