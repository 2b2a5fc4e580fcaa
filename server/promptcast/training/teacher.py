"""Stage 3: the teacher, a latent diffusion UNet conditioned on the frozen text encoder.

v-prediction on the zero-terminal-SNR schedule (training/models.py), with one caption in ten
replaced by the empty prompt so that classifier-free guidance works, and an EMA of the weights,
which is what gets sampled and distilled.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPTextModel

from promptcast.training import models
from promptcast.training.data import UNCONDITIONAL_SHARE, captions, tokens
from promptcast.training.loop import EMA, descend, run_stage, warmup_cosine
from promptcast.training.shapes import Scene


def train_teacher(work: Path, latents: torch.Tensor, scenes: Sequence[Scene],
                  text_encoder: CLIPTextModel, tokenizer: object, steps: int, batch: int,
                  lr: float, rng: random.Random, log: Callable[[str], None],
                  ema_decay: float = 0.999) -> Any:
    """`latents[i]` is the encoded picture of `scenes[i]`. Returns the EMA weights."""
    noise_schedule = models.training_scheduler()
    unet = models.unet()
    ema = EMA(unet, ema_decay)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    schedule = warmup_cosine(optimizer, steps, warmup=min(100, steps))

    def step(i: int) -> float:
        rows = [rng.randrange(len(scenes)) for _ in range(batch)]
        x0 = latents[torch.tensor(rows)]
        texts = captions([scenes[r] for r in rows], rng, UNCONDITIONAL_SHARE)
        with torch.no_grad():
            hidden = text_encoder(tokens(tokenizer, texts))[0]  # (B, 77, D)
        noise = torch.randn_like(x0)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (batch,))
        noisy = noise_schedule.add_noise(x0, noise, t)
        target = noise_schedule.get_velocity(x0, noise, t)
        loss = F.mse_loss(unet(noisy, t, hidden).sample, target)
        value = descend(loss, optimizer, schedule, clip=unet.parameters())
        ema.update(unet)
        return value

    run_stage("teacher", work, steps,
              {"unet": unet, "ema": ema, "opt": optimizer, "lr": schedule}, step, rng, log=log)
    return ema.module.eval()


@torch.no_grad()
def sample(unet: Any, text_encoder: CLIPTextModel, tokenizer: object,
           vae: Any, texts: Sequence[str], seeds: Sequence[int], steps: int = 25,
           guidance: float = 3.0) -> list[np.ndarray]:
    """The teacher's pictures: DDIM with trailing timesteps and classifier-free guidance.
    (H, W, 3) uint8 each."""
    scheduler = models.teacher_sampler()
    scheduler.set_timesteps(steps)
    hidden = text_encoder(tokens(tokenizer, texts))[0]
    empty = text_encoder(tokens(tokenizer, [""]))[0].expand_as(hidden)
    shape = (1, models.LATENT_CHANNELS, models.LATENT_SIZE, models.LATENT_SIZE)
    x = torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    for t in scheduler.timesteps:
        v_empty, v_text = unet(torch.cat([x, x]), t, torch.cat([empty, hidden])).sample.chunk(2)
        x = scheduler.step(v_empty + guidance * (v_text - v_empty), t, x).prev_sample
    return decode(vae, x)


@torch.no_grad()
def decode(vae: Any, latents: torch.Tensor) -> list[np.ndarray]:
    image = vae.decode(latents / vae.config.scaling_factor).sample  # (B, 3, H, W) in [-1, 1]
    pixels = ((image.permute(0, 2, 3, 1) + 1.0) * 127.5).clamp(0, 255).round()
    return list(pixels.to(torch.uint8).numpy())
