"""Few-step model families and exactly how each is sampled, from the model cards.

A preset names the base model, any checkpoint or LoRA to put on it, the scheduler and its
settings, the step counts and guidance the distillation was made for, and the tiny decoder
(TAESD / TAESDXL) that keeps decoding cheaper than a UNet step. `--model` replaces a preset's
base model; `--vae` its decoder.

Without --preset, a user's --model is sampled by what its folder says: LCM if its scheduler
is LCMScheduler or its UNet takes a guidance embedding, otherwise Euler with trailing
timesteps (the Turbo/Lightning recipe), since a many-step scheduler renders mush at 1-2 steps.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

# This table is read by the CLI too, so diffusers is imported only where schedulers are made.
from promptcast.config import EngineConfig
from promptcast.engine.model_index import EMBEDDED_MODEL

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
SD15_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TAESD = "madebyollin/taesd"
TAESDXL = "madebyollin/taesdxl"
LIGHTNING = "ByteDance/SDXL-Lightning"


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    base: str | None  # default model (hub id or folder); None: --model is required
    family: str  # "lcm" or "turbo": how the scheduler is set up
    steps: tuple[int, ...]  # step counts the distillation supports
    default_steps: int
    guidance: float  # LCM checkpoints: embedded scale; others: CFG scale (<= 1: no CFG)
    tiny_vae: str | None = None  # None: decode with the model's own VAE
    # Native resolution is the UNet's sample_size x the VAE's scale (512 for SD-Turbo, SDXL-Turbo;
    # 768 for LCM Dreamshaper; 1024 for SDXL base), as the stock pipelines default to.
    # A UNet checkpoint replacing the base model's; "{k}" is the step count, "{x0}" is "_x0"
    # for a checkpoint that predicts the sample (see checkpoint_file()).
    unet_file: tuple[str, str] | None = None
    # A LoRA fused into the weights at load; "{k}" is the step count.
    lora_file: tuple[str, str] | None = None
    lora_optional: bool = False  # the LoRA is used only with --lora (instead of unet_file)
    lora_steps: tuple[int, ...] = ()  # step counts that have a LoRA file, if not all
    # Step counts whose checkpoint predicts the denoised sample (x0), not the noise.
    sample_prediction_steps: tuple[int, ...] = ()
    checkpoint_per_step_count: bool = False  # one checkpoint per step count: steps fixed at load
    scheduler_overrides: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # The student was distilled for guidance scales 2-6 (training/distill.py); 3 is what
        # its teacher is compared at (docs/default-model.md).
        Preset("tiny", "the embedded shapes model, trained by the project: no GPU, no download",
               str(EMBEDDED_MODEL), "lcm", (1, 2, 3, 4, 5, 6, 7, 8), 2, guidance=3.0),
        Preset("sd-turbo", "SD-Turbo (SD 2.1 distilled), 512 px, 1-4 steps",
               "stabilityai/sd-turbo", "turbo", (1, 2, 3, 4), 1, guidance=0.0, tiny_vae=TAESD),
        Preset("sdxl-turbo", "SDXL-Turbo, 512 px, 1-4 steps",
               "stabilityai/sdxl-turbo", "turbo", (1, 2, 3, 4), 1, guidance=0.0, tiny_vae=TAESDXL),
        Preset("sdxl-lightning", "SDXL base with an SDXL-Lightning UNet (or LoRA), 1024 px, 1/2/4/8 steps",
               SDXL_BASE, "turbo", (1, 2, 4, 8), 2, guidance=0.0, tiny_vae=TAESDXL,
               # The 1-step checkpoint predicts x0 and is named for it.
               unet_file=(LIGHTNING, "sdxl_lightning_{k}step_unet{x0}.safetensors"),
               lora_file=(LIGHTNING, "sdxl_lightning_{k}step_lora.safetensors"),
               lora_optional=True, lora_steps=(2, 4, 8), sample_prediction_steps=(1,),
               checkpoint_per_step_count=True),
        Preset("lcm-lora-sd15", "SD 1.5 with the LCM-LoRA fused in, 512 px, 2-8 steps",
               SD15_BASE, "lcm", (2, 3, 4, 5, 6, 7, 8), 4, guidance=1.0, tiny_vae=TAESD,
               lora_file=("latent-consistency/lcm-lora-sdv1-5", "pytorch_lora_weights.safetensors")),
        Preset("lcm-lora-sdxl", "SDXL base with the LCM-LoRA fused in, 1024 px, 2-8 steps",
               SDXL_BASE, "lcm", (2, 3, 4, 5, 6, 7, 8), 4, guidance=1.0, tiny_vae=TAESDXL,
               lora_file=("latent-consistency/lcm-lora-sdxl", "pytorch_lora_weights.safetensors")),
        Preset("lcm", "a full LCM-distilled checkpoint (default: LCM Dreamshaper v7), 512 px, 1-8 steps",
               "SimianLuo/LCM_Dreamshaper_v7", "lcm", (1, 2, 3, 4, 5, 6, 7, 8), 4, guidance=8.0,
               tiny_vae=TAESD),
    )
}


def fetch_hint(preset: Preset, config: EngineConfig) -> str:
    """The command that fills the cache with what `config` loads, for error messages."""
    parts = ["promptcast download", f"--preset {preset.name}"] if preset.base else []
    if config.model:
        parts.append(f"--model {config.model}")
    if config.lora:
        parts.append("--lora")
    if config.steps and preset.checkpoint_per_step_count:
        parts.append(f"--steps {config.steps}")
    return " ".join(parts) if parts else "huggingface-cli download REPO"


def checkpoint_file(pattern: str, preset: Preset, steps: int) -> str:
    x0 = "_x0" if steps in preset.sample_prediction_steps else ""
    return pattern.format(k=steps, x0=x0)


def infer_preset(scheduler: Any, unet_config: Any, source: str) -> Preset:
    """The recipe for a --model given without --preset, from what its folder says."""
    if type(scheduler).__name__ == "LCMScheduler" or getattr(unet_config, "time_cond_proj_dim", None):
        return Preset("auto-lcm", "LCM sampling, inferred from the model", source, "lcm",
                      (1, 2, 3, 4, 5, 6, 7, 8), 2, guidance=8.0)
    return Preset("auto-turbo", "Euler with trailing timesteps, inferred from the model", source,
                  "turbo", (1, 2, 3, 4), 1, guidance=0.0)


def make_scheduler(preset: Preset, scheduler: Any, steps: int) -> Any:
    """The model's scheduler set up as the preset's model card says."""
    from diffusers import EulerDiscreteScheduler, LCMScheduler

    config = dict(scheduler.config)
    overrides: dict[str, Any] = dict(preset.scheduler_overrides)
    if preset.family == "lcm":
        cls: Any = LCMScheduler
    else:
        # Turbo/Lightning are distilled to start at the last training timestep: trailing
        # spacing. A model that ships an Euler-family scheduler (SDXL-Turbo's ancestral one)
        # keeps it; anything else becomes plain Euler, as the Lightning card does.
        cls = type(scheduler) if "Euler" in type(scheduler).__name__ else EulerDiscreteScheduler
        overrides["timestep_spacing"] = "trailing"
    if steps in preset.sample_prediction_steps:
        overrides["prediction_type"] = "sample"
    # Only keys the target class takes: a LCMScheduler made from Euler's config would warn
    # about every Euler-only key.
    accepted = inspect.signature(cls.__init__).parameters
    return cls.from_config({k: v for k, v in {**config, **overrides}.items() if k in accepted})
