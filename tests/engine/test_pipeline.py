"""The engine on the embedded model and on a user-style model folder, on the CPU."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny, EulerDiscreteScheduler, LCMScheduler
from diffusers import UNet2DConditionModel as UNet
from PIL import Image
from transformers import CLIPTextModel

from promptcast.config import EngineConfig
from promptcast.core.scheduler import RenderRequest
from promptcast.engine.image import encode_jpeg
from promptcast.engine.model_index import EMBEDDED_MODEL, ModelLoadError
from promptcast.engine.pipeline import Engine

from .tiny_models import save_tiny_sd_folder


def req(text: str = "a red circle", seed: int = 1, steps: int = 2, size: int = 64) -> RenderRequest:
    return RenderRequest(text, seed, steps, size, size)


def test_embedded_model_is_a_real_sd_folder_with_the_real_clip_tokenizer(engine: Engine) -> None:
    c = engine.c
    assert isinstance(c.text_encoder, CLIPTextModel)
    assert isinstance(c.unet, UNet)
    assert isinstance(c.vae, AutoencoderTiny)
    assert isinstance(engine.scheduler, LCMScheduler)
    assert len(c.tokenizer) == 49408
    # Ids as OpenAI CLIP assigns them: BOS, "a", "red", EOS.
    assert c.tokenizer("a red").input_ids == [49406, 320, 736, 49407]
    for name in ("model_index.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
                 "unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                 "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"):
        assert (EMBEDDED_MODEL / name).is_file(), name


def test_model_info_and_limits(engine: Engine) -> None:
    info = engine.model_info()
    assert info["family"] == "lcm" and info["scheduler"] == "LCMScheduler"
    assert info["decoder"] == "AutoencoderTiny"
    assert info["timesteps"]["2"] == [999, 499]  # type: ignore[index]
    assert engine.limits.default_size == (64, 64)  # the shapes model: 64 px
    assert engine.limits.sizes == ((32, 32), (64, 64), (128, 128))
    assert engine.limits.default_steps == 2


@pytest.mark.parametrize("size", [32, 64, 128])
def test_renders_a_decodable_jpeg_of_the_requested_size(engine: Engine, size: int) -> None:
    out = engine.render(req(size=size, steps=1))
    assert out.pixels.shape == (size, size, 3) and out.pixels.dtype == np.uint8
    image = Image.open(io.BytesIO(encode_jpeg(out.pixels, 85)))
    assert image.format == "JPEG" and image.size == (size, size)
    assert set(out.timings) == {"text_encode_ms", "denoise_ms", "decode_ms"}


def test_same_seed_same_picture_other_seed_other_picture(engine: Engine) -> None:
    a = engine.render(req(seed=7)).pixels
    assert np.array_equal(a, engine.render(req(seed=7)).pixels)
    assert not np.array_equal(a, engine.render(req(seed=8)).pixels)
    # A different prompt on the same seed starts from the same noise.
    assert not np.array_equal(a, engine.render(req("a blue square", seed=7)).pixels)


def test_only_changed_prompts_run_the_text_encoder(engine: Engine) -> None:
    calls: list[int] = []
    hook = engine.c.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        first = engine.render(req("a prompt only this test uses"))
        again = engine.render(req("a prompt only this test uses", seed=99))
        changed = engine.render(req("a prompt only this test uses!"))
    finally:
        hook.remove()
    assert (first.prompt_cache_hit, again.prompt_cache_hit, changed.prompt_cache_hit) == (
        False, True, False)
    assert len(calls) == 2


def test_warm_up_reports_each_bucket_and_the_time_left(caplog: pytest.LogCaptureFixture) -> None:
    eng = Engine(EngineConfig(sizes=((64, 64), (128, 128))))
    eng.load()
    assert eng.warming is None
    with caplog.at_level("INFO", logger="promptcast.engine.pipeline"):
        eng.warm_up()
    assert eng.warming is not None and (eng.warming.buckets, eng.warming.done) == (2, 2)
    assert eng.warming.left_s() == 0.0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("warm-up:")]
    assert len(lines) == 2  # eager: one bucket per size
    assert lines[0].startswith("warm-up: 64x64, batch 1 done (1 of 2 buckets) after ")
    assert " s left" in lines[0]  # at the rate so far
    assert lines[1].startswith("warm-up: 128x128, batch 1 done (2 of 2 buckets) after ")


def test_prompt_cache_is_bounded() -> None:
    from promptcast.engine.prompt_cache import LRUCache

    cache: LRUCache[int] = LRUCache(2)
    for key in "abac":  # "c" evicts "b", the least recently used
        cache.get_or_compute(key, lambda: 1)
    assert len(cache) == 2 and (cache.hits, cache.misses) == (1, 3)
    assert cache.get_or_compute("a", lambda: 2) == (1, True)
    assert cache.get_or_compute("b", lambda: 2) == (2, False)


def test_a_user_model_folder_loads_the_same_way(tmp_path: Path) -> None:
    folder = save_tiny_sd_folder(tmp_path / "my-sd-model")
    eng = Engine(EngineConfig(model=str(folder), cpu_threads=1))
    eng.load()
    assert isinstance(eng.c.vae, AutoencoderKL)
    # PNDM needs dozens of steps; the engine switches to the turbo recipe.
    assert isinstance(eng.scheduler, EulerDiscreteScheduler)
    assert eng.scheduler.config.timestep_spacing == "trailing"
    assert eng.model_info()["family"] == "turbo"
    assert eng.limits.default_size == (64, 64)  # sample_size 8 x VAE scale 8
    out = eng.render(RenderRequest("a cat", 3, 1, 64, 64))
    assert out.pixels.shape == (64, 64, 3)


def test_configured_sizes_must_suit_the_unet(tmp_path: Path) -> None:
    eng = Engine(EngineConfig(sizes=((72, 72),), size=(72, 72)))
    with pytest.raises(ModelLoadError, match="multiples of 16"):
        eng.load()


def test_not_a_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no model_index\.json"):
        Engine(EngineConfig(model=str(tmp_path))).load()


def test_engine_errors_leave_the_engine_usable(engine: Engine) -> None:
    def fail(*_: object) -> None:
        raise RuntimeError("simulated device fault")

    hook = engine.c.unet.register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            engine.render(req("a prompt that fails"))
    finally:
        hook.remove()
    assert engine.render(req("a prompt that fails")).pixels.shape == (64, 64, 3)


def _hub_cache_with(model: Path, root: Path, repo: str) -> Path:
    """Lay `model` out as the Hugging Face cache holds a downloaded repository."""
    org, name = repo.split("/")
    repo_dir = root / f"models--{org}--{name}"
    commit = "0" * 40
    shutil.copytree(model, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return root


def test_hub_id_loads_offline_from_a_populated_cache(tmp_path: Path) -> None:
    cache = _hub_cache_with(EMBEDDED_MODEL, tmp_path / "hub", "promptcast/tiny-test")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    code = textwrap.dedent(
        """
        import torch; torch.set_num_threads(1)
        from promptcast.config import EngineConfig
        from promptcast.core.scheduler import RenderRequest
        from promptcast.engine.pipeline import Engine
        e = Engine(EngineConfig(model="promptcast/tiny-test"))
        e.load()
        print(e.render(RenderRequest("a cat", 1, 1, 64, 64)).pixels.shape)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("(64, 64, 3)")


def test_unknown_hub_id_offline_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    code = textwrap.dedent(
        """
        from promptcast.engine.model_index import ModelLoadError, read_model_index
        try:
            read_model_index("nobody/no-such-model")
        except ModelLoadError as exc:
            print(exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "nobody/no-such-model" in out.stdout and "huggingface-cli download" in out.stdout


def test_prompt_longer_than_the_encoder_takes_is_truncated(engine: Engine) -> None:
    out = engine.render(req(" ".join(["word"] * 200)))
    assert out.pixels.shape == (64, 64, 3) and out.prompt_truncated
    # 75 words and BOS/EOS fill the 77 tokens exactly; one more is cut.
    assert not engine.render(req(" ".join(["word"] * 75))).prompt_truncated
    assert engine.render(req(" ".join(["word"] * 76))).prompt_truncated




def test_a_cancelled_render_stops_between_steps(engine: Engine) -> None:
    from promptcast.engine.pipeline import RenderCancelled

    polls: list[int] = []

    def cancelled() -> bool:
        polls.append(1)
        return len(polls) > 2  # let two UNet steps run, stop before the third

    with pytest.raises(RenderCancelled):
        engine.render(req(steps=4), cancelled)
    assert len(polls) == 3
    assert engine.render(req(steps=4), lambda: False).pixels.shape == (64, 64, 3)


def test_refine_steps_are_about_twice_the_default(engine: Engine) -> None:
    assert engine.refine_steps(None) == 4  # default 2
    assert engine.refine_steps(8) == 8
    with pytest.raises(ModelLoadError, match="refine steps 9"):
        engine.refine_steps(9)


def test_a_batch_gives_each_request_the_frame_it_gets_alone(engine: Engine) -> None:
    batch = [req("a red circle", seed=1), req("a blue square", seed=2), req("a red circle", seed=3)]
    together = engine.render_batch(batch)
    assert [f.batch_size for f in together] == [3, 3, 3]
    for request, frame in zip(batch, together, strict=True):
        alone = engine.render(request).pixels.astype(int)
        assert np.abs(frame.pixels.astype(int) - alone).max() <= 1  # batched matmuls round alike
    assert not np.array_equal(together[0].pixels, together[2].pixels)  # seeds differ


def test_recover_after_a_failed_render_leaves_the_engine_rendering(engine: Engine) -> None:
    import torch

    engine.recover(torch.OutOfMemoryError("simulated: CUDA out of memory"))
    assert engine.render(req("after recovery")).pixels.shape == (64, 64, 3)


def test_a_requests_own_failure_leaves_the_other_sessions_caches(engine: Engine) -> None:
    from promptcast.engine.image import BadImage

    canvas = encode_jpeg(np.full((64, 64, 3), 90, np.uint8), 90)
    engine.render(RenderRequest("a canvas", 1, 2, 64, 64, canvas, 0.5))  # its latents cached
    cached = len(engine._init_latents)
    with pytest.raises(BadImage) as info:
        engine.render(RenderRequest("a bad canvas", 1, 2, 64, 64, b"not an image", 0.5))
    engine.recover(info.value)  # as the runtime does after any failed render
    assert cached >= 1 and len(engine._init_latents) == cached
    engine.recover(torch.OutOfMemoryError("simulated: CUDA out of memory"))
    assert len(engine._init_latents) == 0


def test_the_engine_encodes_the_jpegs_it_is_asked_for(device_jpeg_engine: Engine,
                                                      engine: Engine) -> None:
    reqs = [req(f"a red circle {i}", seed=i) for i in range(3)]
    frames = device_jpeg_engine.render_batch(reqs, jpeg=[True, False, True])
    assert device_jpeg_engine.encodes_jpeg
    assert frames[1].jpeg is None  # a video frame: nobody would see its JPEG
    for frame in (frames[0], frames[2]):
        assert frame.jpeg is not None and frame.timings["encode_ms"] >= 0
        decoded = np.asarray(Image.open(io.BytesIO(frame.jpeg)).convert("RGB")).astype(int)
        # The JPEG of these very pixels: lossy, so within a few levels on average.
        assert decoded.shape == frame.pixels.shape
        assert np.abs(decoded - frame.pixels.astype(int)).mean() < 4
    # The same pixels as an engine that leaves JPEG to the server's worker threads, which
    # hands back none even when asked.
    plain = engine.render_batch(reqs, jpeg=[True, True, True])
    assert not engine.encodes_jpeg and all(f.jpeg is None and "encode_ms" not in f.timings
                                           for f in plain)
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(frames, plain, strict=True))


def test_the_device_jpegs_of_a_batch_come_back_in_one_copy_split_per_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from promptcast.engine import image

    calls: list[int] = []

    def encode_jpeg(frames: list[torch.Tensor], quality: int) -> list[torch.Tensor]:
        # torchvision's batched call: one 1-D uint8 tensor of JPEG bytes per frame (on the
        # frames' device; this CPU stands in for the GPU).
        calls.append(len(frames))
        return [torch.frombuffer(bytearray(image.encode_jpeg(f.permute(1, 2, 0).numpy(), quality)),
                                 dtype=torch.uint8) for f in frames]

    readbacks: list[int] = []
    real_to_host = image.to_host
    monkeypatch.setattr(image, "to_host", lambda *t: readbacks.append(len(t)) or real_to_host(*t))
    monkeypatch.setitem(sys.modules, "torchvision.io", types.SimpleNamespace(encode_jpeg=encode_jpeg))
    encode = image._nvjpeg(torch.device("cpu"), 90)
    assert callable(encode)
    frames = torch.stack([torch.full((3, 16, 24), v, dtype=torch.uint8) for v in (0, 128, 255)])
    readbacks.clear()
    jpegs = encode(frames)
    assert calls[-1] == 3 and readbacks == [1]  # one batched encode, one copy back
    for jpeg, frame in zip(jpegs, frames, strict=True):
        assert jpeg == image.encode_jpeg(frame.permute(1, 2, 0).numpy(), 90)
        assert Image.open(io.BytesIO(jpeg)).size == (24, 16)


def test_jpeg_encoding_on_the_device_needs_a_working_nvjpeg_on_a_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from promptcast.engine import image

    class BrokenTorchvision(types.ModuleType):
        def __getattr__(self, name: str) -> object:
            # What torchvision built for another torch says when it is imported.
            raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setitem(sys.modules, "torchvision", BrokenTorchvision("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.io", BrokenTorchvision("torchvision.io"))
    cuda = torch.device("cuda")  # never touched: torchvision fails first
    assert image.frame_encoder("auto", cuda, 85) is None  # auto: the CPU encodes instead
    with pytest.raises(ModelLoadError, match=r"nvJPEG \(torchvision cannot be used: operator"):
        image.frame_encoder("device", cuda, 85)
    with pytest.raises(ModelLoadError, match="auto, device or cpu"):
        image.frame_encoder("gpu", cuda, 85)
    assert image.frame_encoder("cpu", torch.device("cpu"), 85) is None


def test_an_lcm_strength_too_small_for_its_steps_takes_the_smallest_that_holds_them(
    engine: Engine,
) -> None:
    # LCM (the embedded model) samples from the first 50 x strength of its 50 distillation
    # timesteps: at 2 steps a strength under 0.04 holds too few, which diffusers refuses.
    assert engine.preset.family == "lcm" and engine.scheduler.config.original_inference_steps == 50
    canvas = encode_jpeg(np.full((64, 64, 3), 120, np.uint8), 90)
    tiny = engine.render(RenderRequest("a canvas", 3, 2, 64, 64, canvas, 0.01)).pixels
    least = engine.render(RenderRequest("a canvas", 3, 2, 64, 64, canvas, 0.05)).pixels
    assert np.array_equal(tiny, least)
