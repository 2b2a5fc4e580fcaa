"""How each few-step model family is sampled: scheduler, steps and guidance.

The embedded default and LCM checkpoints use LCMScheduler with the guidance scale fed in as
an embedding (no classifier-free guidance pass). Turbo/Lightning-style models use Euler with
trailing timesteps and no guidance; so does any model whose folder names a scheduler that
needs many steps, because at 1-2 steps those render mush.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffusers import EulerDiscreteScheduler, LCMScheduler


@dataclass(frozen=True)
class Preset:
    family: str
    default_steps: int
    max_steps: int
    guidance: float  # for LCM: the scale embedded into the UNet's time embedding


LCM = Preset(family="lcm", default_steps=2, max_steps=8, guidance=8.0)
TURBO = Preset(family="turbo", default_steps=1, max_steps=4, guidance=0.0)


def few_step_scheduler(scheduler: Any, unet_config: Any) -> tuple[Any, Preset]:
    """Pick the sampling recipe for a loaded model from its scheduler and UNet config."""
    if isinstance(scheduler, LCMScheduler) or getattr(unet_config, "time_cond_proj_dim", None):
        if not isinstance(scheduler, LCMScheduler):
            scheduler = LCMScheduler.from_config(scheduler.config)
        return scheduler, LCM
    # Trailing spacing starts sampling at the last training timestep, which 1-4 step
    # models are distilled for (SD-Turbo, SDXL-Lightning model cards).
    return EulerDiscreteScheduler.from_config(scheduler.config, timestep_spacing="trailing"), TURBO
