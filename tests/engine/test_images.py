"""img2img init images decoded beside the engine thread (engine/image.py's DecodedImages): the
engine finds what a worker decoded, waits for a decode under way, and decodes only what nobody
started."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from promptcast.core.scheduler import RenderRequest
from promptcast.engine import image
from promptcast.engine.compile import encoder_call
from promptcast.engine.image import BadImage, DecodedImages, decode_image
from promptcast.engine.pipeline import Engine


def png(colour: tuple[int, int, int], size: int = 96) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, format="PNG")
    return out.getvalue()


class DecodeRecorder:
    """Stands in for decode_image: records the thread of each call; `gate` holds decodes back."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.threads: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        monkeypatch.setattr(image, "decode_image", self)

    def __call__(self, data: bytes, width: int, height: int) -> np.ndarray:
        self.threads.append(threading.current_thread().name)
        assert self.gate.wait(10)
        return decode_image(data, width, height)


def test_a_started_decode_runs_on_a_worker_and_is_taken_once(monkeypatch: pytest.MonkeyPatch) -> None:
    decodes = DecodeRecorder(monkeypatch)
    decodes.gate.clear()  # the worker is still decoding when the engine asks
    images = DecodedImages()
    data = png((200, 30, 30))
    images.start(data, 64, 64)
    images.start(data, 64, 64)  # the same image again (a text update keeps the image): no new decode
    decodes.gate.set()
    pixels = images.get(data, 64, 64)
    assert pixels.shape == (64, 64, 3) and tuple(pixels[0, 0]) == (200, 30, 30)
    assert len(decodes.threads) == 1 and decodes.threads[0].startswith("promptcast-image")
    # Not started: decoded by the caller. Another size is another decode.
    images.get(png((0, 0, 255)), 64, 64)
    images.get(data, 32, 32)
    assert decodes.threads[1:] == [threading.current_thread().name] * 2


def test_a_bad_image_started_raises_when_taken() -> None:
    images = DecodedImages()
    images.start(b"not an image", 64, 64)
    with pytest.raises(BadImage, match="could not be decoded"):
        images.get(b"not an image", 64, 64)


def test_a_bad_image_asked_for_again_raises_afresh_each_time() -> None:
    # A session keeps its image and types on: each frame asks for the same failed decode. One
    # exception object raised each time would grow its traceback by every raise's frames (and
    # keep their locals, a render's tensors, alive).
    images = DecodedImages()
    images.start(b"not an image", 64, 64).exception()  # (the decode is done)
    raised = []
    for _ in range(3):
        with pytest.raises(BadImage, match="could not be decoded") as info:
            images.get(b"not an image", 64, 64)
        raised.append(info.value)
    assert len({id(exc) for exc in raised}) == 3
    depths = []
    for exc in raised:
        depth, tb = 0, exc.__traceback__
        while tb is not None:
            depth, tb = depth + 1, tb.tb_next
        depths.append(depth)
    assert depths[0] == depths[-1], depths


def test_only_the_newest_images_are_kept_and_older_decodes_not_begun_are_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decodes = DecodeRecorder(monkeypatch)
    decodes.gate.clear()  # the one worker is stuck on the first image
    images = DecodedImages(capacity=2, workers=1)
    flood = [png((i * 20, 0, 0)) for i in range(6)]
    started = [images.start(data, 64, 64) for data in flood]
    assert len(images._decodes) == 2
    # The first had begun; the next three were dropped before they began; the last two wait.
    assert [d.cancelled() for d in started] == [False, True, True, True, False, False]
    decodes.gate.set()
    assert tuple(images.get(flood[5], 64, 64)[0, 0]) == (100, 0, 0)
    # A dropped one (a job that did run after all, say) is decoded by the caller.
    assert tuple(images.get(flood[2], 64, 64)[0, 0]) == (40, 0, 0)
    assert decodes.threads[-1] == threading.current_thread().name
    assert len(decodes.threads) == 4  # first, the two newest, and the one asked for again


def test_the_engine_renders_from_the_prefetched_image(
    engine: Engine, monkeypatch: pytest.MonkeyPatch,
) -> None:
    request = RenderRequest("a red circle", 1, 2, 64, 64, png((10, 120, 240)), 0.6)
    alone = engine.render(request).pixels  # decoded by the engine thread, as without prefetch
    engine._init_latents.clear()
    engine._images = DecodedImages()
    decodes = DecodeRecorder(monkeypatch)
    engine.prefetch(request)
    engine.prefetch(RenderRequest("text only", 1, 2, 64, 64))  # nothing to decode
    assert np.array_equal(engine.render(request).pixels, alone)
    assert len(decodes.threads) == 1 and decodes.threads[0].startswith("promptcast-image")


def test_the_image_encoder_call_gives_the_stock_pipelines_latents(engine: Engine) -> None:
    # The stock img2img pipelines: image / 127.5 - 1, encoded; the tiny autoencoder's latents or
    # the mode of a full one's distribution; times the scaling factor.
    full = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4,
                         norm_num_groups=8, scaling_factor=0.18215).eval()
    pixels = torch.from_numpy(np.stack([decode_image(png((i * 90, 40, 200)), 32, 32)
                                        for i in range(2)])).permute(0, 3, 1, 2)
    x = pixels.float() / 127.5 - 1.0
    with torch.no_grad():
        for vae, want in ((engine.c.vae, engine.c.vae.encode(x).latents),
                          (full, full.encode(x).latent_dist.mode())):
            got = encoder_call(vae, torch.float32)(pixels)
            torch.testing.assert_close(got, want * vae.config.scaling_factor)


def test_a_decode_dropped_after_it_was_looked_up_is_decoded_by_the_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decodes = DecodeRecorder(monkeypatch)
    decodes.gate.clear()
    images = DecodedImages(workers=1)
    images.start(png((1, 2, 3)), 64, 64)  # the worker is stuck on this one
    waiting = images.start(png((200, 0, 0)), 64, 64)
    assert waiting.cancel()  # as start does when newer images push it out, between lookup and wait
    decodes.gate.set()
    assert tuple(images.get(png((200, 0, 0)), 64, 64)[0, 0]) == (200, 0, 0)
    assert decodes.threads[-1] == threading.current_thread().name
