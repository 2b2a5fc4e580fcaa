"""The random-weight real architectures: built on the meta device (nothing allocated, no
full-size forward pass on the CPU), except the embedded tiny model, which renders for real."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    EulerDiscreteScheduler,
    LCMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from promptcast.engine.archs import ARCHS, build_components, parameter_counts, stock_pipeline

META = torch.device("meta")

# Parameter counts of the released models (the sums of their safetensors files' tensor sizes,
# as the hub's model pages and the papers report them). The builds match these exactly:
# SD 1.5 UNet 859,520,964; SD 2.1 UNet 865,910,724; SDXL UNet 2,567,463,684; CLIP ViT-L text
# 123,060,480; OpenCLIP ViT-H text (23 layers) 340,387,840; OpenCLIP bigG text with projection
# 694,659,840; AutoencoderKL 83,653,863; TAESD encoder + decoder 2,445,063 (the "about 2.4M"
# often quoted; madebyollin/taesd's float32 weights file is 9.8 MB, i.e. 2.45M parameters).
PUBLISHED = {
    ("sd15", "unet"): 859.52e6,
    ("sd15", "text_encoder"): 123.06e6,
    ("sd15", "full_vae"): 83.65e6,
    ("sd15", "vae"): 2.445e6,
    ("sd21", "unet"): 865.91e6,
    ("sd21", "text_encoder"): 340.39e6,
    ("sd21", "full_vae"): 83.65e6,
    ("sd21", "vae"): 2.445e6,
    ("sdxl", "unet"): 2567.46e6,
    ("sdxl", "text_encoder"): 123.06e6,
    ("sdxl", "text_encoder_2"): 694.66e6,
    ("sdxl", "full_vae"): 83.65e6,
    ("sdxl", "vae"): 2.445e6,
}

BIG_ARCHS = ("sd15", "sd21", "sdxl")


@pytest.mark.parametrize("arch", BIG_ARCHS)
def test_parameter_counts_match_the_published_models(arch: str) -> None:
    counts = parameter_counts(arch)
    published = {name: n for (a, name), n in PUBLISHED.items() if a == arch}
    assert counts.keys() == published.keys()
    for name, n in published.items():
        assert counts[name] == pytest.approx(n, rel=0.005), (arch, name, counts[name])


def test_parameter_counts_of_the_tiny_model() -> None:
    counts = parameter_counts("tiny")
    assert set(counts) == {"text_encoder", "unet", "vae", "full_vae"}
    assert 0 < counts["unet"] < 5e6  # the embedded model is small


@pytest.mark.parametrize("arch", BIG_ARCHS)
def test_meta_build_is_wired_like_the_real_model(arch: str) -> None:
    """Classes, native size, scheduler, and a forward pass on meta tensors (shapes only): the
    text features fit the UNet's cross attention, SDXL's pooled text and size numbers fit its
    extra embedding, and both decoders turn latents into pixels at 8x."""
    c = build_components(arch, META, torch.float16)
    assert torch.get_default_dtype() == torch.float32  # the build leaves the default alone
    sdxl = arch == "sdxl"
    assert c.arch == ("sdxl" if sdxl else "sd")
    assert isinstance(c.unet, UNet2DConditionModel)
    assert type(c.text_encoder) is CLIPTextModel
    assert isinstance(c.vae, AutoencoderTiny) and isinstance(c.full_vae, AutoencoderKL)
    for model in (c.text_encoder, c.unet, c.vae, c.full_vae):
        assert model.device == META and not model.training
    assert c.text_encoder.dtype == c.unet.dtype == c.vae.dtype == torch.float16
    # SDXL's full autoencoder overflows in fp16 (force_upcast): fp32, as the loader leaves it.
    assert c.full_vae.dtype == (torch.float32 if sdxl else torch.float16)
    assert c.unet.config.sample_size == {"sd15": 64, "sd21": 64, "sdxl": 128}[arch]
    assert c.force_zeros_for_empty_prompt is sdxl and c.lora is None

    sched = c.scheduler.config
    assert (sched.num_train_timesteps, sched.beta_start, sched.beta_end, sched.beta_schedule) == (
        1000, 0.00085, 0.012, "scaled_linear")
    assert sched.prediction_type == "epsilon"
    if arch == "sd15":
        assert isinstance(c.scheduler, LCMScheduler)
    else:
        assert isinstance(c.scheduler, EulerDiscreteScheduler) and sched.timestep_spacing == "trailing"

    ids = c.tokenizer("a red circle", padding="max_length", max_length=77, return_tensors="pt").input_ids
    out = c.text_encoder(ids.to(META), output_hidden_states=True)
    embeds, added = out.hidden_states[-2], None
    if sdxl:
        assert type(c.text_encoder_2) is CLIPTextModelWithProjection
        assert c.tokenizer_2.pad_token == "!"
        out_2 = c.text_encoder_2(ids.to(META), output_hidden_states=True)
        embeds = torch.cat([embeds, out_2.hidden_states[-2]], dim=-1)
        added = {"text_embeds": out_2[0], "time_ids": torch.zeros(1, 6, device=META, dtype=torch.float16)}
    else:
        assert c.text_encoder_2 is None and c.tokenizer_2 is None
    assert embeds.shape == (1, 77, c.unet.config.cross_attention_dim)
    side = c.unet.config.sample_size
    latents = torch.zeros(1, 4, side, side, device=META, dtype=torch.float16)
    pred = c.unet(latents, torch.tensor(999), encoder_hidden_states=embeds, added_cond_kwargs=added).sample
    assert pred.shape == latents.shape
    for vae in (c.vae, c.full_vae):
        assert vae.decode(pred.to(vae.dtype)).sample.shape == (1, 3, side * 8, side * 8)


@pytest.mark.parametrize("arch", BIG_ARCHS)
def test_stock_pipeline_shares_the_models_and_decodes_with_the_tiny_autoencoder(arch: str) -> None:
    c = build_components(arch, META, torch.float16)
    pipe = stock_pipeline(c)
    assert type(pipe) is (StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline)
    assert pipe.vae is c.vae and pipe.unet is c.unet and pipe.text_encoder is c.text_encoder
    assert pipe.tokenizer is c.tokenizer
    if arch == "sdxl":
        assert pipe.text_encoder_2 is c.text_encoder_2 and pipe.tokenizer_2 is c.tokenizer_2
    # Its own scheduler (the pipeline sets timesteps on it), configured the same.
    assert pipe.scheduler is not c.scheduler and dict(pipe.scheduler.config) == dict(c.scheduler.config)
    assert pipe.vae_scale_factor == 8


def test_tiny_renders_through_the_stock_pipeline() -> None:
    c = build_components("tiny", torch.device("cpu"), torch.float32)
    assert c.arch == "sd" and isinstance(c.vae, AutoencoderTiny)
    pipe = stock_pipeline(c)
    image = pipe(
        "a red circle", height=64, width=64, num_inference_steps=1, guidance_scale=0.0,
        generator=torch.Generator("cpu").manual_seed(0), output_type="np",
    ).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_unknown_architecture() -> None:
    assert "tiny" in ARCHS
    with pytest.raises(ValueError, match="unknown architecture"):
        build_components("sd3", META, torch.float16)
    with pytest.raises(ValueError, match="unknown architecture"):
        parameter_counts("sd3")
