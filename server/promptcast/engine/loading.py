"""Loading a preset's models from hub ids or local folders, exactly as users call them.

Hub ids resolve through the Hugging Face cache (so HF_HUB_OFFLINE=1 works from a populated
cache) and local folders load directly; the embedded default model goes through the same
`from_pretrained` path. Anything missing becomes one ModelLoadError naming the repository,
the file when known, and the command that fetches it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)

from promptcast.config import EngineConfig
from promptcast.engine.model_index import ModelLoadError, read_model_index
from promptcast.engine.presets import Preset, checkpoint_file, fetch_hint

log = logging.getLogger(__name__)

SD_COMPONENTS = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")


@dataclass
class Components:
    source: str
    name: str
    arch: str  # "sd" (one CLIP text encoder) or "sdxl" (two, plus pooled text and size conditioning)
    tokenizer: Any
    text_encoder: Any
    tokenizer_2: Any  # SDXL only
    text_encoder_2: Any  # SDXL only
    unet: Any
    vae: Any  # the decoder in use: tiny unless --full-vae or the preset has none
    full_vae: Any  # the model's own autoencoder (may be the same object as vae)
    scheduler: Any  # as the model folder ships it; presets.make_scheduler adapts it
    force_zeros_for_empty_prompt: bool
    lora: str | None  # "repo/file" fused into the weights, if any


def fetch_file(repo: str, filename: str, hint: str) -> str:
    """A file of a hub repository (from the cache when offline), or of a local folder."""
    if Path(repo).is_dir():
        path = Path(repo) / filename
        if not path.is_file():
            raise ModelLoadError(f"{filename} is missing from the folder {repo}")
        return str(path)
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo, filename)
    except Exception as exc:
        raise ModelLoadError(
            f"{filename} of {repo} is neither in the Hugging Face cache nor downloadable "
            f"({type(exc).__name__}). Fetch it on a machine with internet: {hint}"
        ) from None


def _load(what: str, repo: str, hint: str, load: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return load(repo, *args, **kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:  # diffusers/hub raise OSError, ValueError, EnvironmentError...
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"could not load the {what} from {repo}: {first_line}. If the weights are not "
            f"downloaded yet, fetch them on a machine with internet: {hint}"
        ) from None


def load_components(
    config: EngineConfig, preset: Preset, steps: int, device: torch.device, dtype: torch.dtype
) -> Components:
    source = config.model or preset.base
    if source is None:
        raise ModelLoadError(f"preset {preset.name} needs --model")
    hint = fetch_hint(preset, config)
    index = read_model_index(source, hint)
    missing = [name for name in SD_COMPONENTS if not (index.get(name) or [None])[0]]
    if missing:
        raise ModelLoadError(
            f"{source} is not a Stable Diffusion or SDXL model folder: model_index.json names "
            f"{index.get('_class_name')!r} without {', '.join(missing)}"
        )
    sdxl = "text_encoder_2" in index
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True}
    if not sdxl:
        # The safety checker is a second large model on the hot path; not loaded.
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    use_lora = preset.lora_file is not None and (config.lora or not preset.lora_optional)
    if preset.unet_file is not None and not use_lora:
        repo, pattern = preset.unet_file
        filename = checkpoint_file(pattern, preset, steps)
        kwargs["unet"] = _unet_from_checkpoint(source, repo, filename, hint, dtype)

    pipeline_class = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    pipe = _load("model", source, hint, pipeline_class.from_pretrained, **kwargs)

    lora = None
    if use_lora:
        assert preset.lora_file is not None
        repo, pattern = preset.lora_file
        if preset.lora_steps and steps not in preset.lora_steps:
            raise ModelLoadError(
                f"{preset.name} has LoRA files for {list(preset.lora_steps)} steps, not {steps}"
            )
        filename = checkpoint_file(pattern, preset, steps)
        fetch_file(repo, filename, hint)  # a clear error if it is missing
        pipe.load_lora_weights(repo, weight_name=filename)
        # Fusing folds the LoRA into the UNet's weights, so it costs nothing per frame.
        pipe.fuse_lora()
        pipe.unload_lora_weights()
        lora = f"{repo}/{filename}"

    vae = pipe.vae
    if config.vae:
        vae = _load_vae(config.vae, hint, dtype)
    elif preset.tiny_vae and not config.full_vae:
        vae = _load("tiny decoder", preset.tiny_vae, hint, AutoencoderTiny.from_pretrained, dtype=dtype)

    pipe.to(device)
    # Whether it decodes every frame or only the refined ones (--refine-full-vae); a --vae too.
    for autoencoder in {id(m): m for m in (vae, pipe.vae)}.values():
        upcast_if_it_overflows(autoencoder, dtype, sdxl)
    for model in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None), pipe.unet, pipe.vae, vae):
        if model is not None:
            model.to(device).eval().requires_grad_(False)  # .to(device) keeps each dtype
    name = index.get("_promptcast_name") or source.rstrip("/").split("/")[-1]
    return Components(
        source=source, name=name, arch="sdxl" if sdxl else "sd",
        tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder,
        tokenizer_2=getattr(pipe, "tokenizer_2", None),
        text_encoder_2=getattr(pipe, "text_encoder_2", None),
        unet=pipe.unet, vae=vae, full_vae=pipe.vae, scheduler=pipe.scheduler,
        force_zeros_for_empty_prompt=bool(pipe.config.get("force_zeros_for_empty_prompt", False)),
        lora=lora,
    )


def upcast_if_it_overflows(vae: Any, dtype: torch.dtype, sdxl: bool) -> None:
    """SDXL's full VAE produces NaNs in fp16 (black frames): as diffusers' SDXL pipelines do, an
    SDXL model's autoencoder whose config says force_upcast runs in fp32 when the model runs in
    fp16. (Its SD pipelines ignore the flag, which diffusers sets by default: SD's VAEs are fine
    in fp16.) The decoder call casts the latents to its dtype."""
    if sdxl and vae.config.get("force_upcast") and dtype == torch.float16:
        vae.to(torch.float32)


def _unet_from_checkpoint(source: str, repo: str, filename: str, hint: str, dtype: torch.dtype) -> Any:
    """The base model's UNet architecture with another checkpoint's weights (SDXL-Lightning)."""
    from safetensors.torch import load_file

    config = _load("UNet config", source, hint, UNet2DConditionModel.load_config, subfolder="unet")
    unet = UNet2DConditionModel.from_config(config)
    unet.load_state_dict(load_file(fetch_file(repo, filename, hint)))
    return unet.to(dtype)


def _load_vae(source: str, hint: str, dtype: torch.dtype) -> Any:
    """--vae: a tiny or a full autoencoder, whichever its config names."""
    config = _load("VAE config", source, hint, AutoencoderKL.load_config)
    cls = AutoencoderTiny if config.get("_class_name") == "AutoencoderTiny" else AutoencoderKL
    return _load("VAE", source, hint, cls.from_pretrained, dtype=dtype)
