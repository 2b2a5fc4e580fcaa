"""Stage 4: latent consistency distillation (LCD) of the teacher into a few-step student.

As in "Latent Consistency Models" (Luo et al., 2023) and diffusers' reference recipe:
- the student is the teacher plus a projection of the guidance-scale embedding (starting at
  zero), so one forward pass stands for a classifier-free-guided pair;
- at each step a timestep t is drawn from the 50-step grid LCMScheduler samples (19, ..., 999),
  the teacher takes one guided DDIM step from t to t - 20 (the skipping-step ODE solver), and
  the student's consistency function at t is pulled toward an EMA copy of itself at t - 20;
- the consistency function is c_skip(t) x_t + c_out(t) x0(t), with LCMScheduler's boundary
  scalings, so that sampling it with LCMScheduler is exactly what was trained.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import CLIPTextModel

from promptcast.engine.pipeline import guidance_embedding
from promptcast.training import models
from promptcast.training.data import captions, tokens
from promptcast.training.loop import EMA, descend, run_stage, warmup_cosine
from promptcast.training.shapes import Scene

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0  # LCMScheduler's default; the boundary scalings depend on it
HUBER_C = 0.001  # the pseudo-Huber constant of diffusers' LCM distillation scripts


def boundary_scalings(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """c_skip, c_out at timesteps t, shaped (B, 1, 1, 1), as LCMScheduler computes them."""
    scaled = t.float() * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip[:, None, None, None], c_out[:, None, None, None]


def consistency_loss(predicted: torch.Tensor, wanted: torch.Tensor, kind: str) -> torch.Tensor:
    """"l2": mean squared error; "huber": mean of sqrt(d^2 + c^2) - c, quadratic for |d| << c
    and |d| - c beyond it."""
    if kind == "huber":
        return (((predicted - wanted) ** 2 + HUBER_C**2).sqrt() - HUBER_C).mean()
    if kind == "l2":
        return F.mse_loss(predicted, wanted)
    raise ValueError(f"unknown distillation loss {kind!r}")


def distill(work: Path, teacher: Any, latents: torch.Tensor,
            scenes: Sequence[Scene], text_encoder: CLIPTextModel, tokenizer: object, steps: int,
            batch: int, lr: float, rng: random.Random, log: Callable[[str], None],
            guidance_range: tuple[float, float] = (1.0, 5.0),
            target_decay: float = 0.95, loss_kind: str = "l2") -> Any:
    """`guidance_range`: the span of w (guidance scale - 1) the student learns to embed.
    `loss_kind`: "l2", or "huber": the pseudo-Huber distance of the LCM paper (c = 0.001),
    close to L1 on unit-variance latents, which pulls toward the target's median, not its mean."""
    alphas = models.training_scheduler().alphas_cumprod  # (1000,)
    skip = alphas.shape[0] // models.ORIGINAL_STEPS
    grid = torch.arange(1, models.ORIGINAL_STEPS + 1) * skip - 1  # 19, 39, ..., 999
    teacher.requires_grad_(False)
    student = models.student_from(teacher).train()
    target = EMA(student, target_decay, warmup=False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    schedule = warmup_cosine(optimizer, steps, warmup=min(50, steps), floor=0.3)
    with torch.no_grad():
        empty = text_encoder(tokens(tokenizer, [""]))[0]  # (1, 77, D)

    def x0_from_v(v: torch.Tensor, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a.sqrt() * x - (1 - a).sqrt() * v

    def step(i: int) -> float:
        rows = [rng.randrange(len(scenes)) for _ in range(batch)]
        x0 = latents[torch.tensor(rows)]
        texts = captions([scenes[r] for r in rows], rng)
        with torch.no_grad():
            hidden = text_encoder(tokens(tokenizer, texts))[0]
        t = grid[torch.randint(0, len(grid), (batch,))]
        t_prev = (t - skip).clamp(min=0)
        a_t = alphas[t][:, None, None, None]
        a_prev = alphas[t_prev][:, None, None, None]
        noise = torch.randn_like(x0)
        x_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise
        w = torch.empty(batch).uniform_(*guidance_range)
        w_embed = guidance_embedding(w, models.GUIDANCE_DIM)
        w4 = w[:, None, None, None]

        c_skip, c_out = boundary_scalings(t)
        v = student(x_t, t, hidden, timestep_cond=w_embed).sample
        predicted = c_skip * x_t + c_out * x0_from_v(v, x_t, a_t)

        with torch.no_grad():
            # One guided DDIM step of the teacher, t -> t_prev.
            v_empty, v_text = teacher(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                      torch.cat([empty.expand_as(hidden), hidden])).sample.chunk(2)
            x0_e, x0_c = x0_from_v(v_empty, x_t, a_t), x0_from_v(v_text, x_t, a_t)
            eps_e = a_t.sqrt() * v_empty + (1 - a_t).sqrt() * x_t
            eps_c = a_t.sqrt() * v_text + (1 - a_t).sqrt() * x_t
            x0_g = x0_c + w4 * (x0_c - x0_e)
            eps_g = eps_c + w4 * (eps_c - eps_e)
            x_prev = a_prev.sqrt() * x0_g + (1 - a_prev).sqrt() * eps_g
            # The target: the EMA student's consistency function one solver step later.
            c_skip_p, c_out_p = boundary_scalings(t_prev)
            v_p = target.module(x_prev, t_prev, hidden, timestep_cond=w_embed).sample
            wanted = c_skip_p * x_prev + c_out_p * x0_from_v(v_p, x_prev, a_prev)

        loss = consistency_loss(predicted, wanted, loss_kind)
        value = descend(loss, optimizer, schedule, clip=student.parameters())
        target.update(student)
        return value

    run_stage("distill", work, steps,
              {"student": student, "target": target, "opt": optimizer, "lr": schedule}, step,
              rng, log=log)
    return target.module.eval()
