"""The real Stable Diffusion architectures with random weights, for GPU benchmarks.

A benchmark of the render path needs the real models' shapes (their FLOPs, memory traffic and
kernel choices decide the timings) but not their weights: random weights cost the same per
frame, need no download (gigabytes, and no hub access where benchmarks run) and make the
numbers reproducible anywhere. So the configs below are the public models' own configs, written
out as plain dicts, and every model is built from them with real diffusers/transformers classes,
straight on the target device and in the target dtype.

The pictures are noise, of course; only the timings mean anything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from promptcast.config import EngineConfig
from promptcast.engine.loading import Components, load_components, upcast_if_it_overflows
from promptcast.engine.model_index import EMBEDDED_MODEL
from promptcast.engine.presets import PRESETS

# "tiny" is the embedded model itself (its own small weights), so benchmarks can run the same
# code on a machine without a GPU.
ARCHS = ("sdxl", "sd15", "sd21", "tiny")

# ---------------------------------------------------------------- UNets

_SD_UNET_BLOCKS: dict[str, Any] = {
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
}

# runwayml/stable-diffusion-v1-5 (now stable-diffusion-v1-5/stable-diffusion-v1-5), unet/config.json,
# complete: written by diffusers 0.6, everything else is the class's default.
SD15_UNET: dict[str, Any] = {
    **_SD_UNET_BLOCKS,
    "act_fn": "silu", "attention_head_dim": 8, "center_input_sample": False, "cross_attention_dim": 768,
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "out_channels": 4, "sample_size": 64,  # 64 latents: 512 px
}

# stabilityai/sd-turbo, unet/config.json: the SD 2.1 UNet (1024-wide OpenCLIP text features,
# per-block head dims, linear projections in the transformers). SD 2.1 itself ships
# sample_size 96 (768 px); SD-Turbo is distilled at, and defaults to, 512 px.
SD21_UNET: dict[str, Any] = {
    **_SD_UNET_BLOCKS,
    "act_fn": "silu", "addition_embed_type": None, "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": None, "attention_head_dim": [5, 10, 20, 20], "attention_type": "default",
    "center_input_sample": False, "class_embed_type": None, "class_embeddings_concat": False,
    "conv_in_kernel": 3, "conv_out_kernel": 3, "cross_attention_dim": 1024, "cross_attention_norm": None,
    "downsample_padding": 1, "dropout": 0.0, "dual_cross_attention": False, "encoder_hid_dim": None,
    "encoder_hid_dim_type": None, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 2, "mid_block_only_cross_attention": None, "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_attention_heads": None, "num_class_embeds": None, "only_cross_attention": False,
    "out_channels": 4, "projection_class_embeddings_input_dim": None, "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False, "resnet_time_scale_shift": "default",
    "reverse_transformer_layers_per_block": None, "sample_size": 64, "time_cond_proj_dim": None,
    "time_embedding_act_fn": None, "time_embedding_dim": None, "time_embedding_type": "positional",
    "timestep_post_act": None, "transformer_layers_per_block": 1, "upcast_attention": None,
    "use_linear_projection": True,
}

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json (SDXL-Turbo and SDXL-Lightning
# share it): three levels, 1/2/10 transformer blocks deep, 2048-wide text features (768 + 1280
# from the two encoders), and the pooled text (1280) plus six size numbers embedded in 256 each
# as extra conditioning: 1280 + 6 * 256 = 2816.
SDXL_UNET: dict[str, Any] = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
    "center_input_sample": False, "class_embed_type": None, "class_embeddings_concat": False,
    "conv_in_kernel": 3, "conv_out_kernel": 3, "cross_attention_dim": 2048, "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "encoder_hid_dim": None,
    "encoder_hid_dim_type": None, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 2, "mid_block_only_cross_attention": None, "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_attention_heads": None, "num_class_embeds": None, "only_cross_attention": False,
    "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False, "resnet_time_scale_shift": "default",
    "sample_size": 128,  # 128 latents: 1024 px
    "time_cond_proj_dim": None, "time_embedding_act_fn": None, "time_embedding_dim": None,
    "time_embedding_type": "positional", "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None, "use_linear_projection": True,
}

# ---------------------------------------------------------------- text encoders

# Keys every CLIP text config below shares. The token ids are the configs' own (transformers'
# defaults): with eos_token_id 2 the pooled output is taken at the highest token id, which is
# the real tokenizer's end-of-text token, exactly as the real models do.
_CLIP_TEXT: dict[str, Any] = {
    "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2,
    "initializer_factor": 1.0, "initializer_range": 0.02, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77, "model_type": "clip_text_model", "pad_token_id": 1, "vocab_size": 49408,
}

# OpenAI CLIP ViT-L/14's text tower: runwayml/stable-diffusion-v1-5 text_encoder/config.json,
# identical to stabilityai/stable-diffusion-xl-base-1.0 text_encoder/config.json.
CLIP_L_TEXT: dict[str, Any] = {
    **_CLIP_TEXT, "hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072,
    "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768,
}

# OpenCLIP ViT-H/14's text tower without its last layer (SD 2.x conditions on the penultimate
# one, so diffusers ships 23 of the 24): stabilityai/sd-turbo text_encoder/config.json, the same
# as stabilityai/stable-diffusion-2-1's.
OPENCLIP_H_TEXT: dict[str, Any] = {
    **_CLIP_TEXT, "hidden_act": "gelu", "hidden_size": 1024, "intermediate_size": 4096,
    "num_attention_heads": 16, "num_hidden_layers": 23, "projection_dim": 512,
}

# OpenCLIP ViT-bigG/14's text tower with its projection (SDXL's pooled text):
# stabilityai/stable-diffusion-xl-base-1.0 text_encoder_2/config.json.
OPENCLIP_BIGG_TEXT: dict[str, Any] = {
    **_CLIP_TEXT, "hidden_act": "gelu", "hidden_size": 1280, "intermediate_size": 5120,
    "num_attention_heads": 20, "num_hidden_layers": 32, "projection_dim": 1280,
}

# ---------------------------------------------------------------- autoencoders

_KL_VAE: dict[str, Any] = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
    "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
# runwayml/stable-diffusion-v1-5 vae/config.json (scaling_factor is the class default, 0.18215).
SD15_VAE: dict[str, Any] = {**_KL_VAE, "sample_size": 512}
# stabilityai/sd-turbo vae/config.json: SD 2.1's autoencoder, the same network as SD 1.5's.
SD21_VAE: dict[str, Any] = {**_KL_VAE, "sample_size": 768, "scaling_factor": 0.18215}
# stabilityai/stable-diffusion-xl-base-1.0 vae/config.json: the same network, retrained; it
# overflows in fp16, hence force_upcast.
SDXL_VAE: dict[str, Any] = {**_KL_VAE, "force_upcast": True, "sample_size": 1024, "scaling_factor": 0.13025}

# madebyollin/taesd config.json; madebyollin/taesdxl's is identical (same network, trained for
# SDXL's latents). These are also AutoencoderTiny's defaults.
TAESD: dict[str, Any] = {
    "act_fn": "relu", "decoder_block_out_channels": [64, 64, 64, 64],
    "encoder_block_out_channels": [64, 64, 64, 64], "force_upcast": False, "in_channels": 3,
    "latent_channels": 4, "latent_magnitude": 3, "latent_shift": 0.5, "num_decoder_blocks": [3, 3, 3, 1],
    "num_encoder_blocks": [1, 3, 3, 3], "out_channels": 3, "scaling_factor": 1.0,
    "upsampling_scaling_factor": 2,
}

# ---------------------------------------------------------------- schedulers

# The training noise schedule of every Stable Diffusion model (scheduler_config.json on the hub).
_SD_BETAS: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
}
# stabilityai/sd-turbo scheduler/scheduler_config.json, as far as EulerDiscreteScheduler takes
# it: trailing timesteps, noise (epsilon) prediction. SDXL base ships the same scheduler with
# "leading" spacing; trailing is what its few-step derivatives (Turbo, Lightning) sample with.
EULER_TRAILING: dict[str, Any] = {
    **_SD_BETAS, "interpolation_type": "linear", "prediction_type": "epsilon", "steps_offset": 1,
    "timestep_spacing": "trailing", "use_karras_sigmas": False,
}
# SD 1.5's scheduler config as LCMScheduler takes it: the LCM-LoRA recipe is
# LCMScheduler.from_config(<SD 1.5 scheduler config>).
LCM: dict[str, Any] = {
    **_SD_BETAS, "clip_sample": False, "prediction_type": "epsilon", "set_alpha_to_one": False,
    "steps_offset": 1,
}


@dataclass(frozen=True)
class _Spec:
    """What an architecture is made of."""

    unet: dict[str, Any]
    text_encoder: dict[str, Any]
    text_encoder_2: dict[str, Any] | None  # SDXL only
    full_vae: dict[str, Any]
    scheduler_class: type
    scheduler: dict[str, Any]


_SPECS: dict[str, _Spec] = {
    "sd15": _Spec(SD15_UNET, CLIP_L_TEXT, None, SD15_VAE, LCMScheduler, LCM),
    "sd21": _Spec(SD21_UNET, OPENCLIP_H_TEXT, None, SD21_VAE, EulerDiscreteScheduler, EULER_TRAILING),
    "sdxl": _Spec(
        SDXL_UNET, CLIP_L_TEXT, OPENCLIP_BIGG_TEXT, SDXL_VAE, EulerDiscreteScheduler, EULER_TRAILING
    ),
}


@contextlib.contextmanager
def _building_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """New tensors are made on `device` in `dtype`: a multi-billion-parameter model is then
    initialised where it will run (seconds on a GPU, a minute or more on the CPU) and never
    exists as a float32 copy on its way there. The default dtype is process-wide: build while
    no other thread makes tensors."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _build_models(arch: str) -> dict[str, Any]:
    """The networks of `arch`, random, on the current default device and dtype."""
    spec = _SPECS[arch]
    text_2 = spec.text_encoder_2
    return {
        "text_encoder": CLIPTextModel(CLIPTextConfig(**spec.text_encoder)),
        "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**text_2)) if text_2 else None,
        "unet": UNet2DConditionModel.from_config(spec.unet),
        "vae": AutoencoderTiny.from_config(TAESD),
        "full_vae": AutoencoderKL.from_config(spec.full_vae),
    }


def _tokenizer(**overrides: Any) -> CLIPTokenizer:
    # The real CLIP tokenizer (SD 1.x, 2.x and both of SDXL's use the same vocabulary), shipped
    # with the embedded model.
    return CLIPTokenizer.from_pretrained(EMBEDDED_MODEL, subfolder="tokenizer", **overrides)


def _tiny_components(device: torch.device, dtype: torch.dtype) -> Components:
    """The embedded model, through the loader the server uses."""
    preset = PRESETS["tiny"]
    return load_components(EngineConfig(), preset, preset.default_steps, device, dtype)


def build_components(arch: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Components:
    """`arch`'s models with random weights (the same for the same seed, device and dtype), on
    `device` in `dtype`, in eval mode without gradients, as engine/loading.py hands them over.
    "tiny" loads the embedded model and ignores `seed`."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; architectures: {', '.join(ARCHS)}")
    device = torch.device(device)
    if arch == "tiny":
        return _tiny_components(device, dtype)
    spec = _SPECS[arch]
    sdxl = spec.text_encoder_2 is not None
    torch.manual_seed(seed)
    with _building_on(device, dtype):
        models = _build_models(arch)
    for model in models.values():
        if model is not None:
            model.eval().requires_grad_(False)
    upcast_if_it_overflows(models["full_vae"], dtype, sdxl)  # as engine/loading.py does
    # SD 2.x and SDXL's second encoder come with OpenCLIP's tokenizer settings, which pad with
    # "!" instead of the end-of-text token (their tokenizer folders say so).
    tokenizer = _tokenizer(pad_token="!") if arch == "sd21" else _tokenizer()
    return Components(
        source=f"random:{arch}", name=f"{arch} architecture (random weights, seed {seed})",
        arch="sdxl" if sdxl else "sd",
        tokenizer=tokenizer, text_encoder=models["text_encoder"],
        tokenizer_2=_tokenizer(pad_token="!") if sdxl else None, text_encoder_2=models["text_encoder_2"],
        unet=models["unet"], vae=models["vae"], full_vae=models["full_vae"],
        scheduler=spec.scheduler_class(**spec.scheduler),
        # SDXL base's model_index.json sets it: the unconditional prompt is zeros.
        force_zeros_for_empty_prompt=sdxl,
        lora=None,
    )


def parameter_counts(arch: str) -> dict[str, int]:
    """Parameters per component of `arch`, counted on the meta device: nothing is allocated.
    "vae" is the tiny autoencoder (encoder and decoder), "full_vae" the model's own."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; architectures: {', '.join(ARCHS)}")
    if arch == "tiny":  # a few MB: loaded as it is
        c = _tiny_components(torch.device("cpu"), torch.float32)
        models = {"text_encoder": c.text_encoder, "text_encoder_2": c.text_encoder_2, "unet": c.unet,
                  "vae": c.vae, "full_vae": c.full_vae}
    else:
        with torch.device("meta"):
            models = _build_models(arch)
    return {name: sum(p.numel() for p in m.parameters()) for name, m in models.items() if m is not None}


def stock_pipeline(c: Components) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """The stock diffusers pipeline over the same model objects, decoding with the tiny
    autoencoder, so a benchmark can time it on the same settings as the engine."""
    # A scheduler of its own: the pipeline sets its timesteps on every call, and the engine's
    # schedulers are made from c.scheduler's config, which must stay as it is.
    scheduler = type(c.scheduler).from_config(c.scheduler.config)
    pipe: Any  # diffusers' pipelines are not typed well enough for mypy to see their methods
    if c.arch == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=c.vae, text_encoder=c.text_encoder, text_encoder_2=c.text_encoder_2, tokenizer=c.tokenizer,
            tokenizer_2=c.tokenizer_2, unet=c.unet, scheduler=scheduler,
            force_zeros_for_empty_prompt=c.force_zeros_for_empty_prompt,
            # The engine does not watermark; nor does the pipeline it is compared with.
            add_watermarker=False,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe
