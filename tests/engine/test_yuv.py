"""I420 made on the render device (engine/yuv.py) against libswscale's, through PyAV: the
conversion the frames of a video track went through on the CPU before."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from av import VideoFrame

from promptcast.config import EngineConfig
from promptcast.core.scheduler import RenderRequest
from promptcast.engine.model_index import ModelLoadError
from promptcast.engine.pipeline import Engine
from promptcast.engine.yuv import converts_on_device, i420_from_rgb


def _images(height: int, width: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    gx, gy = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    blocks = np.kron(rng.integers(0, 256, (height // 8, width // 8, 3)), np.ones((8, 8, 1)))
    return {
        "noise": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        "gradient": np.stack([gx, gy, 255 - gx], -1).astype(np.uint8),
        "flat blocks": blocks.astype(np.uint8),
        "extremes": np.where(rng.random((height, width, 1)) < 0.5, 0, 255).repeat(3, -1).astype(np.uint8),
    }


def _swscale(pixels: np.ndarray) -> np.ndarray:
    frame = VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format="yuv420p")
    planes: np.ndarray = frame.to_ndarray()
    return planes


@pytest.mark.parametrize(("height", "width"), [(64, 96), (128, 128)])
def test_i420_matches_libswscale_within_one_level(height: int, width: int) -> None:
    images = _images(height, width)
    batch = torch.from_numpy(np.stack(list(images.values()))).permute(0, 3, 1, 2).contiguous()
    ours = i420_from_rgb(batch).numpy()  # one call for the batch: rows stay apart
    assert ours.shape == (len(images), height * 3 // 2, width) and ours.dtype == np.uint8
    for i, (name, pixels) in enumerate(images.items()):
        diff = np.abs(ours[i].astype(int) - _swscale(pixels).astype(int))
        assert diff.max() <= 1, f"{name}: max difference {diff.max()}"
        assert diff[:height].mean() < 0.05 and diff[height:].mean() < 0.2, name


def test_the_planes_wrap_as_a_video_frame_of_the_same_picture() -> None:
    pixels = _images(64, 96)["gradient"]
    planes = i420_from_rgb(torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous())[0]
    frame = VideoFrame.from_ndarray(planes.numpy(), format="yuv420p")
    assert (frame.width, frame.height) == (96, 64)
    back = frame.to_ndarray(format="rgb24").astype(int)
    assert np.abs(back - pixels.astype(int)).mean() < 3  # 4:2:0 and 8-bit rounding, no more


def test_odd_sizes_are_refused() -> None:
    with pytest.raises(AssertionError, match="even"):
        i420_from_rgb(torch.zeros(1, 3, 63, 64, dtype=torch.uint8))


@pytest.fixture(scope="module")
def converting() -> Engine:
    eng = Engine(EngineConfig(video_convert="device"))  # on a CPU device: the engine thread
    eng.load()
    return eng


def test_the_engine_makes_planes_only_for_the_frames_bound_for_video(
    converting: Engine, engine: Engine,
) -> None:
    reqs = [RenderRequest("a red circle", 1, 2, 64, 64), RenderRequest("a blue square", 2, 2, 64, 64)]
    plain, video = converting.render_batch(reqs, None, [False, False], [False, True])
    assert plain.yuv is None and video.yuv is not None
    want = i420_from_rgb(torch.from_numpy(video.pixels).permute(2, 0, 1)[None].contiguous())[0]
    assert np.array_equal(video.yuv, want.numpy())
    assert "encode_ms" in video.timings  # the conversion is the frame's encode stage
    # On a CPU device `auto` leaves it to the track's worker thread (libswscale).
    assert not engine.converts_video
    assert engine.render(reqs[0], None, False, True).yuv is None


def test_an_unknown_video_convert_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="--video-convert"):
        converts_on_device("gpu", torch.device("cpu"))
