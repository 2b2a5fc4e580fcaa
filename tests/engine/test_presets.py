"""Every preset loads by its real hub ids from a Hugging Face cache (offline), is set up as its
model card says, and renders what the stock diffusers pipeline renders with the same settings.

The cache holds tiny models under the real repo ids (tests/engine/hub_fixtures.py), so this is
the code path a user hits, at a size a CPU runs in seconds.
"""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    DiffusionPipeline,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionXLImg2ImgPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from safetensors.torch import load_file

from promptcast.config import EngineConfig
from promptcast.core.scheduler import RenderRequest
from promptcast.engine.model_index import ModelLoadError
from promptcast.engine.pipeline import Engine

from . import hub_fixtures as hub

# Timesteps as the model cards' schedulers produce them for 1000 training steps.
TRAILING = {1: [999], 2: [999, 499], 4: [999, 749, 499, 249],
            8: [999, 874, 749, 624, 499, 374, 249, 124]}
LCM_50 = {1: [999], 2: [999, 499], 4: [999, 759, 499, 259]}


@cache
def _engine(preset: str, steps: int | None = None, lora: bool = False, guidance: float | None = None,
            full_vae: bool = False) -> Engine:
    eng = Engine(EngineConfig(preset=preset, steps=steps, lora=lora, guidance=guidance,
                              full_vae=full_vae))
    eng.load()
    return eng


@pytest.fixture
def load(hub_cache: Path) -> Any:
    return _engine


@pytest.mark.parametrize(
    ("preset", "steps", "scheduler", "prediction", "guidance", "arch", "decoder"),
    [
        ("sd-turbo", None, EulerDiscreteScheduler, "epsilon", 0.0, "sd", AutoencoderTiny),
        ("sdxl-turbo", None, EulerAncestralDiscreteScheduler, "epsilon", 0.0, "sdxl", AutoencoderTiny),
        ("sdxl-lightning", 1, EulerDiscreteScheduler, "sample", 0.0, "sdxl", AutoencoderTiny),
        ("sdxl-lightning", 2, EulerDiscreteScheduler, "epsilon", 0.0, "sdxl", AutoencoderTiny),
        ("sdxl-lightning", 4, EulerDiscreteScheduler, "epsilon", 0.0, "sdxl", AutoencoderTiny),
        ("sdxl-lightning", 8, EulerDiscreteScheduler, "epsilon", 0.0, "sdxl", AutoencoderTiny),
        ("lcm-lora-sd15", None, LCMScheduler, "epsilon", 1.0, "sd", AutoencoderTiny),
        ("lcm-lora-sdxl", None, LCMScheduler, "epsilon", 1.0, "sdxl", AutoencoderTiny),
        ("lcm", None, LCMScheduler, "epsilon", 8.0, "sd", AutoencoderTiny),
    ],
)
def test_preset_is_set_up_as_its_model_card_says(
    load: Any, preset: str, steps: int | None, scheduler: type, prediction: str, guidance: float,
    arch: str, decoder: type,
) -> None:
    eng = load(preset, steps)
    assert type(eng.scheduler) is scheduler
    assert eng.scheduler.config.prediction_type == prediction
    assert eng.guidance == guidance and eng.c.arch == arch
    assert isinstance(eng.c.vae, decoder)
    info = eng.model_info()
    assert info["preset"] == preset and info["scheduler"] == scheduler.__name__
    assert info["prediction_type"] == prediction and info["decoder"] == decoder.__name__
    if scheduler is LCMScheduler:
        for k, expected in LCM_50.items():
            if k in eng.limits.steps:
                assert eng.timesteps[k] == expected, k
    else:
        assert eng.scheduler.config.timestep_spacing == "trailing"
        for k in eng.limits.steps:
            assert eng.timesteps[k] == TRAILING.get(k, eng.timesteps[k]), k
        assert eng.timesteps[eng.limits.default_steps] == TRAILING[eng.limits.default_steps]


def test_steps_offered_per_preset(load: Any) -> None:
    assert load("sd-turbo").limits.steps == (1, 2, 3, 4)
    assert load("sd-turbo").limits.default_steps == 1
    # One Lightning checkpoint is distilled for one step count.
    assert load("sdxl-lightning").limits.steps == (2,)
    assert load("sdxl-lightning", 1).limits.steps == (1,)
    assert load("lcm-lora-sd15").limits.steps == (2, 3, 4, 5, 6, 7, 8)
    assert load("lcm-lora-sd15").limits.default_steps == 4


def test_lightning_unet_checkpoint_replaces_the_base_unet(load: Any, hub_cache: Path) -> None:
    from huggingface_hub import hf_hub_download

    for k, filename in hub.LIGHTNING_UNET_FILES.items():
        weights = load_file(hf_hub_download(hub.SDXL_LIGHTNING, filename))
        unet = load("sdxl-lightning", k).c.unet
        name = "conv_in.weight"
        assert torch.equal(unet.state_dict()[name], weights[name]), k


def test_loras_are_fused_into_the_weights(load: Any) -> None:
    plain = UNet2DConditionModel.from_pretrained(hub.SD15, subfolder="unet")
    fused = load("lcm-lora-sd15").c.unet
    assert load("lcm-lora-sd15").model_info()["lora"] == (
        f"{hub.LCM_LORA_SD15}/{hub.LCM_LORA_WEIGHT_NAME}")
    # Fused: no LoRA layers left, and attention weights differ from the base model's.
    assert not any("lora" in name for name in fused.state_dict())
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert not torch.equal(fused.state_dict()[name], plain.state_dict()[name])
    lightning_lora = load("sdxl-lightning", 2, lora=True)
    assert lightning_lora.model_info()["lora"].endswith("sdxl_lightning_2step_lora.safetensors")


def test_lightning_has_no_one_step_lora(hub_cache: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"LoRA files for \[2, 4, 8\] steps, not 1"):
        Engine(EngineConfig(preset="sdxl-lightning", steps=1, lora=True)).load()


def test_full_vae_and_vae_override(load: Any, hub_cache: Path) -> None:
    assert isinstance(load("sd-turbo", full_vae=True).c.vae, AutoencoderKL)
    eng = Engine(EngineConfig(preset="sd-turbo", vae=hub.TAESDXL))
    eng.load()
    assert eng.model_info()["decoder"] == "AutoencoderTiny"


def test_sdxls_full_vae_is_kept_in_fp32_in_fp16_even_beside_the_tiny_decoder(
    hub_cache: Path, tmp_path: Path,
) -> None:
    # SDXL's VAE overflows in fp16 and decodes black; its config says force_upcast, and the
    # stock SDXL pipelines decode in fp32. It also decodes refined frames (--refine-full-vae)
    # beside the tiny decoder, so it is upcast there too. SD's VAEs are fine in fp16.
    sdxl = DiffusionPipeline.from_pretrained(hub.SDXL_TURBO)
    sdxl.vae.register_to_config(force_upcast=True)  # as the real SDXL's says
    sdxl.save_pretrained(tmp_path / "my-sdxl")
    eng = Engine(EngineConfig(model=str(tmp_path / "my-sdxl"), vae=hub.TAESDXL, dtype="float16"))
    eng.load()
    assert isinstance(eng.c.vae, AutoencoderTiny) and eng.c.vae.dtype == torch.float16
    assert isinstance(eng.c.full_vae, AutoencoderKL) and eng.c.full_vae.dtype == torch.float32
    assert eng.c.unet.dtype == torch.float16
    sd = Engine(EngineConfig(preset="sd-turbo", dtype="float16"))
    sd.load()
    assert sd.c.full_vae.config.force_upcast and sd.c.full_vae.dtype == torch.float16


def test_native_sizes_come_from_the_model(load: Any) -> None:
    # The tiny fixtures have sample_size 8: 64 px, as 64 gives SD-Turbo's 512 px.
    assert load("sd-turbo").limits.default_size == (64, 64)
    assert load("sdxl-turbo").limits.default_size == (64, 64)


# ------------------------------------------------------------ missing weights


def test_missing_base_model_names_repo_and_the_download_command(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        Engine(EngineConfig(preset="lcm", model="nobody/missing-model")).load()
    message = str(info.value)
    assert "model_index.json of nobody/missing-model" in message
    assert "promptcast download --preset lcm --model nobody/missing-model" in message


def test_missing_lightning_file_names_repo_file_and_command(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from promptcast.engine import presets

    broken = presets.Preset(**{
        **presets.PRESETS["sdxl-lightning"].__dict__,
        "unet_file": (hub.SDXL_LIGHTNING, "sdxl_lightning_{k}step_unet_missing.safetensors"),
    })
    monkeypatch.setitem(presets.PRESETS, "sdxl-lightning", broken)
    with pytest.raises(ModelLoadError) as info:
        Engine(EngineConfig(preset="sdxl-lightning", steps=4)).load()
    message = str(info.value)
    assert "sdxl_lightning_4step_unet_missing.safetensors of ByteDance/SDXL-Lightning" in message
    assert "promptcast download --preset sdxl-lightning --steps 4" in message


def test_missing_tiny_decoder_is_named(hub_cache: Path) -> None:
    with pytest.raises(ModelLoadError, match="nobody/taesd-gone"):
        Engine(EngineConfig(preset="sd-turbo", vae="nobody/taesd-gone")).load()


# ------------------------------------------------------------ same pictures as stock diffusers

PROMPT = "a lighthouse on a cliff"
SEED = 1234


def stock_pipeline(eng: Engine) -> Any:
    """The stock pipeline the model card would build, from the same hub cache."""
    preset = eng.preset
    kwargs: dict[str, Any] = {}
    if eng.c.arch == "sd":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if preset.name == "sdxl-lightning" and not eng.c.lora:
        from huggingface_hub import hf_hub_download

        steps = eng.limits.default_steps
        unet = UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(hub.SDXL_BASE, subfolder="unet"))
        unet.load_state_dict(load_file(hf_hub_download(hub.SDXL_LIGHTNING,
                                                       hub.LIGHTNING_UNET_FILES[steps])))
        kwargs["unet"] = unet
    pipe = DiffusionPipeline.from_pretrained(preset.base, **kwargs)
    if preset.lora_file is not None and (eng.c.lora or not preset.lora_optional):
        repo, _ = preset.lora_file
        pipe.load_lora_weights(repo, weight_name=eng.c.lora.split("/")[-1])
        pipe.fuse_lora()
    pipe.scheduler = type(eng.scheduler).from_config(eng.scheduler.config)
    pipe.vae = AutoencoderTiny.from_pretrained(preset.tiny_vae)  # as the TAESD cards show
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock_render(eng: Engine, pipe: Any, steps: int, size: int, **kwargs: Any
                 ) -> tuple[np.ndarray, torch.Tensor]:
    """The stock pipeline's picture (as 8-bit levels) and its final latents."""
    def run(output_type: str) -> Any:
        extra = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        return pipe(
            PROMPT, num_inference_steps=steps, guidance_scale=eng.guidance, height=size,
            width=size, generator=torch.Generator("cpu").manual_seed(SEED),
            output_type=output_type, **extra,
        ).images

    pixels = (run("np")[0] * 255).round().astype(np.int16)
    return pixels, run("latent")


def render_with_latents(eng: Engine, req: RenderRequest, monkeypatch: pytest.MonkeyPatch
                        ) -> tuple[np.ndarray, torch.Tensor]:
    """Our frame, and the final latents the decoder received."""
    seen: list[torch.Tensor] = []
    decode = eng._decode
    monkeypatch.setattr(eng, "_decode",
                        lambda latents, vae: seen.append(latents.clone()) or decode(latents, vae))
    pixels = eng.render(req).pixels
    monkeypatch.undo()
    return pixels, seen[0]


def assert_same_picture(ours: tuple[np.ndarray, torch.Tensor], pixels: np.ndarray,
                        latents: torch.Tensor) -> None:
    # Final latents first: random tiny decoders can saturate to near-black, latents cannot.
    assert latents.std() > 0.1
    torch.testing.assert_close(ours[1], latents, atol=1e-4, rtol=1e-4)
    diff = np.abs(ours[0].astype(np.int16) - pixels)
    # Rounding to 8 bits may differ by one level; anything more is a different picture.
    assert diff.max() <= 1, f"max difference {diff.max()}, mean {diff.mean():.3f}"


@pytest.mark.parametrize(
    ("preset", "steps", "lora", "guidance"),
    [
        ("sd-turbo", 1, False, None),
        ("sd-turbo", 2, False, None),
        ("sdxl-turbo", 2, False, None),  # ancestral: draws from the generator every step
        ("sdxl-lightning", 1, False, None),  # x0 prediction
        ("sdxl-lightning", 4, False, None),
        ("sdxl-lightning", 2, True, None),
        ("lcm-lora-sd15", 4, False, None),
        ("lcm-lora-sd15", 2, False, 1.5),  # classifier-free guidance, as the card allows
        ("lcm-lora-sdxl", 2, False, 1.5),  # CFG with SDXL's zeroed empty prompt
        ("lcm", 4, False, None),  # the guidance scale embedded, no CFG
    ],
)
def test_frames_match_the_stock_diffusers_pipeline(
    load: Any, preset: str, steps: int, lora: bool, guidance: float | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checkpoint_steps = steps if preset == "sdxl-lightning" else None
    eng = load(preset, checkpoint_steps, lora, guidance)
    size = eng.limits.default_size[0]
    ours = render_with_latents(eng, RenderRequest(PROMPT, SEED, steps, size, size), monkeypatch)
    noise = eng._initial_noise(SEED, size, size)
    assert_same_picture(ours, *stock_render(eng, stock_pipeline(eng), steps, size, latents=noise))


def _init_image(size: int) -> bytes:
    gradient = np.linspace(0, 255, size * size * 3).reshape(size, size, 3).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(gradient).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize(("preset", "steps", "strength"),
                         [("sd-turbo", 2, 0.5), ("sdxl-turbo", 4, 0.75), ("lcm", 4, 0.5)])
def test_img2img_matches_the_stock_img2img_pipeline(
    load: Any, preset: str, steps: int, strength: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    eng = load(preset)
    size = eng.limits.default_size[0]
    image = _init_image(size)
    req = RenderRequest(PROMPT, SEED, steps, size, size, image, strength)
    ours = render_with_latents(eng, req, monkeypatch)
    # The next frame of the same schedule uses what the first worked out, and leaves the
    # scheduler alone (its add_noise would copy its tables to the device every frame).
    with monkeypatch.context() as m:
        m.setattr(eng.scheduler, "add_noise", None)
        m.setattr(eng.scheduler, "set_timesteps", None)
        again = render_with_latents(eng, req, m)
    torch.testing.assert_close(again[1], ours[1], atol=0, rtol=0)
    text2img = stock_pipeline(eng)
    if eng.preset.family == "lcm":
        from diffusers import LatentConsistencyModelImg2ImgPipeline as Img2Img
    else:
        Img2Img = StableDiffusionXLImg2ImgPipeline if eng.c.arch == "sdxl" else (
            StableDiffusionImg2ImgPipeline)
    pipe = Img2Img(**{k: v for k, v in text2img.components.items()
                      if k in Img2Img._get_signature_keys(Img2Img)[0]})
    pipe.set_progress_bar_config(disable=True)
    stock = stock_render(eng, pipe, steps, size, image=Image.open(io.BytesIO(image)),
                         strength=strength)
    assert_same_picture(ours, *stock)
    # And img2img is not txt2img: the init image shows through.
    txt2img = render_with_latents(eng, RenderRequest(PROMPT, SEED, steps, size, size), monkeypatch)
    assert not torch.allclose(ours[1], txt2img[1])


def test_refined_frames_can_decode_with_the_full_vae(
    load: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    eng = load("sd-turbo")
    assert isinstance(eng.c.vae, AutoencoderTiny) and isinstance(eng.c.full_vae, AutoencoderKL)
    tiny = eng.render(RenderRequest(PROMPT, SEED, 1, 64, 64)).pixels
    full = eng.render(RenderRequest(PROMPT, SEED, 1, 64, 64, full_vae=True)).pixels
    assert tiny.shape == full.shape and not np.array_equal(tiny, full)
    # The full decoder runs eager, never warmed: not with cuDNN timing its convolutions then.
    seen: list[bool] = []
    decoder = eng._full_decoder
    monkeypatch.setattr(eng, "_full_decoder",
                        lambda latents: seen.append(torch.backends.cudnn.benchmark) or decoder(latents))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)  # as --compile-tuning sets it
    eng.render(RenderRequest(PROMPT, SEED, 1, 64, 64, full_vae=True))
    eng.render(RenderRequest(PROMPT, SEED, 1, 64, 64))
    assert seen == [False] and torch.backends.cudnn.benchmark
    # Lightning's steps are fixed by its checkpoint: a refine can only change the decoder.
    assert load("sdxl-lightning").refine_steps(None) == 2


def test_download_resolves_every_file_a_preset_loads(hub_cache: Path) -> None:
    from promptcast.engine.download import download

    paths = download(EngineConfig(preset="sdxl-lightning", steps=4))
    assert paths[0].endswith(hub.commit_hash(hub.SDXL_BASE))
    assert paths[1].endswith("sdxl_lightning_4step_unet.safetensors")
    assert paths[2].endswith(hub.commit_hash(hub.TAESDXL))
    assert download(EngineConfig(preset="lcm-lora-sd15"))[1].endswith(hub.LCM_LORA_WEIGHT_NAME)
    with pytest.raises(ModelLoadError, match="download failed"):
        download(EngineConfig(preset="lcm", model="nobody/not-cached"))
