"""Loading a diffusers-format Stable Diffusion model from a local folder or a hub id.

`StableDiffusionPipeline.from_pretrained` does the loading, the way users load models: hub
ids resolve through the Hugging Face cache (HF_HUB_OFFLINE=1 works from a populated cache)
and local folders load directly. The embedded default model goes through exactly this path.
The server then drives the pipeline's components itself (engine/pipeline.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import StableDiffusionPipeline

from promptcast.engine.model_index import ModelLoadError, read_model_index

SD_COMPONENTS = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")


@dataclass
class Components:
    source: str
    name: str
    tokenizer: Any
    text_encoder: Any
    unet: Any
    vae: Any
    scheduler: Any


def load_components(source: str, device: torch.device, dtype: torch.dtype) -> Components:
    index = read_model_index(source)
    missing = [name for name in SD_COMPONENTS if not (index.get(name) or [None])[0]]
    if missing or "text_encoder_2" in index:
        raise ModelLoadError(
            f"{source} is not a Stable Diffusion 1.x/2.x-style model (one CLIP text encoder, "
            f"a UNet, a VAE): model_index.json names {index.get('_class_name')!r}"
        )
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            source, dtype=dtype,
            # The safety checker is a second large model on the hot path; not loaded.
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load {source!r}: {exc}") from None
    pipe.to(device)
    for model in (pipe.text_encoder, pipe.unet, pipe.vae):
        model.eval().requires_grad_(False)
    name = index.get("_promptcast_name") or source.rstrip("/").split("/")[-1]
    return Components(
        source, name, pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae, pipe.scheduler
    )
