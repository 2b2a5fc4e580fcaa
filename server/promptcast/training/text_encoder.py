"""Stage 2: the CLIP-architecture text encoder, taught what captions say.

It learns to tell, from the hidden states at the end-of-text token and the padding after it,
each attribute a caption names (or that it names none). Trained this way before the UNet and
then frozen, it hands the UNet a clean description from the UNet's first step on; learning the
words only through the diffusion loss was too slow on this CPU (see shared design).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPTextModel

from promptcast.training import models
from promptcast.training.data import LABELS, captions, labels, tokens
from promptcast.training.loop import descend, run_stage, warmup_cosine
from promptcast.training.shapes import Scene

EOS = 49407


def summary_positions(ids: torch.Tensor) -> torch.Tensor:
    """(N, 77) bool: the first end-of-text token and everything after it (the padding)."""
    first_eos = (ids == EOS).int().argmax(dim=1, keepdim=True)  # (N, 1)
    return torch.arange(ids.shape[1])[None, :] >= first_eos


class AttributeHeads(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.heads = torch.nn.ModuleDict(
            {attr: torch.nn.Linear(width, len(values)) for attr, values in LABELS.items()}
        )

    def loss(self, hidden: torch.Tensor, ids: torch.Tensor, targets: dict[str, torch.Tensor]
             ) -> torch.Tensor:
        mask = summary_positions(ids)  # (N, 77)
        picked = hidden[mask]  # (M, W): every summary position of every caption
        rows = mask.nonzero()[:, 0]  # (M,): whose caption each one is
        return sum(
            (F.cross_entropy(head(picked), targets[attr][rows]) for attr, head in self.heads.items()),
            start=torch.zeros(()),
        )

    def accuracy(self, hidden: torch.Tensor, ids: torch.Tensor,
                 targets: dict[str, torch.Tensor]) -> dict[str, float]:
        at_eos = hidden[torch.arange(len(ids)), (ids == EOS).int().argmax(dim=1)]  # (N, W)
        return {attr: float((head(at_eos).argmax(1) == targets[attr]).float().mean())
                for attr, head in self.heads.items()}


def train_text_encoder(work: Path, scenes: Sequence[Scene], tokenizer: object, steps: int,
                       batch: int, lr: float, rng: random.Random,
                       log: Callable[[str], None]) -> CLIPTextModel:
    encoder = models.text_encoder()
    heads = AttributeHeads(models.TEXT_WIDTH)
    params = [*encoder.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = warmup_cosine(optimizer, steps, warmup=min(50, steps))

    def step(i: int) -> float:
        texts = captions(rng.choices(scenes, k=batch), rng, unconditional=0.1)
        ids = tokens(tokenizer, texts)
        loss = heads.loss(encoder(ids).last_hidden_state, ids, labels(texts))
        return descend(loss, optimizer, schedule)

    run_stage("text_encoder", work, steps,
              {"encoder": encoder, "heads": heads, "opt": optimizer, "lr": schedule}, step, rng,
              log=log)
    held_out = captions(random.Random(99).choices(scenes, k=512), random.Random(98))
    ids = tokens(tokenizer, held_out)
    with torch.no_grad():
        acc = heads.accuracy(encoder(ids).last_hidden_state, ids, labels(held_out))
    log("[text_encoder] held-out accuracy: " + ", ".join(f"{a} {v:.1%}" for a, v in acc.items()))
    return encoder.eval().requires_grad_(False)
