"""Stage 1: the tiny autoencoder, trained to reconstruct the domain's pictures.

Two things beyond reconstruction make its latents good for the diffusion model:
- they are pulled toward zero mean and unit variance per channel: Stable Diffusion pipelines
  apply only a scale (`scaling_factor`), no shift, so latents far from zero would leave the
  diffusion model's last timestep with signal in it;
- the decoder is trained on slightly perturbed latents, since a few-step model's latents are
  never exactly the encoder's.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from promptcast.training import models
from promptcast.training.loop import descend, run_stage, warmup_cosine

LATENT_NOISE = 0.1  # the decoder's input perturbation, in latent standard deviations
MOMENT_WEIGHT = 0.05


def train_autoencoder(work: Path, images: torch.Tensor, steps: int, batch: int, lr: float,
                      rng: random.Random, log: Callable[[str], None]) -> Any:
    """`images`: (N, 3, H, W) in [-1, 1]."""
    ae = models.autoencoder()
    optimizer = torch.optim.AdamW(ae.parameters(), lr=lr, weight_decay=0.0)
    schedule = warmup_cosine(optimizer, steps, warmup=min(50, steps))

    def step(i: int) -> float:
        x = images[torch.tensor([rng.randrange(len(images)) for _ in range(batch)])]
        # encoder/decoder directly: AutoencoderTiny.encode/decode add only slicing around them
        z = ae.encoder(x)  # (B, 4, H/4, W/4)
        decoded = ae.decoder(z + LATENT_NOISE * torch.randn_like(z))
        mean, std = z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3))
        moments = (mean.square() + (std - 1.0).square()).mean()
        loss = F.mse_loss(decoded, x) + 0.5 * F.l1_loss(decoded, x) + MOMENT_WEIGHT * moments
        return descend(loss, optimizer, schedule)

    run_stage("autoencoder", work, steps, {"ae": ae, "opt": optimizer, "lr": schedule}, step,
              rng, log=log)
    ae.eval().requires_grad_(False)
    # The pipelines multiply encoder output by scaling_factor and divide by it before decoding;
    # it makes the latents unit-variance overall.
    with torch.no_grad():
        std = float(ae.encoder(images[:512]).std())
    ae.register_to_config(scaling_factor=1.0 / std)
    return ae


def refine_decoder(work: Path, ae: Any, images: torch.Tensor, steps: int, batch: int, lr: float,
                   rng: random.Random, log: Callable[[str], None]) -> Any:
    """Stage 5: more training for the decoder alone, on the frozen encoder's latents.

    The autoencoder stage is short, and its decoder limits colour: re-encoding the domain's
    own pictures and reading them back got 88% of colours right. The encoder fixes the latent
    space the teacher and student were trained in, so it stays as it is and only the decoder,
    which runs on every frame, learns more; nothing trained on the latents needs retraining."""
    ae = copy.deepcopy(ae)
    ae.decoder.requires_grad_(True).train()
    with torch.no_grad():
        latents = torch.cat([ae.encoder(images[i:i + 256]) for i in range(0, len(images), 256)])
    optimizer = torch.optim.AdamW(ae.decoder.parameters(), lr=lr, weight_decay=0.0)
    schedule = warmup_cosine(optimizer, steps, warmup=min(50, steps))

    def step(i: int) -> float:
        pick = torch.tensor([rng.randrange(len(images)) for _ in range(batch)])
        z, x = latents[pick], images[pick]
        decoded = ae.decoder(z + LATENT_NOISE * torch.randn_like(z))
        return descend(F.mse_loss(decoded, x) + 0.5 * F.l1_loss(decoded, x), optimizer, schedule)

    run_stage("decoder", work, steps, {"decoder": ae.decoder, "opt": optimizer, "lr": schedule},
              step, rng, log=log)
    return ae.eval().requires_grad_(False)


@torch.no_grad()
def encode_all(ae: Any, images: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """(N, 4, h, w) latents in the UNet's scale."""
    parts = [ae.encoder(images[i:i + chunk]) for i in range(0, len(images), chunk)]
    return torch.cat(parts) * ae.config.scaling_factor


def psnr(ae: Any, images: torch.Tensor) -> float:
    with torch.no_grad():
        decoded = ae.decoder(ae.encoder(images)).clamp(-1, 1)
    mse = float(F.mse_loss(decoded, images)) / 4.0  # in [0, 1] units
    return float(10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-10))))
