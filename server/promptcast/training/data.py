"""Training batches from the shapes domain.

The domain is finite: 4 shapes x 10 colours x 2 sizes x 5 positions x 9 backgrounds = 3,600
scenes, each with one exact render. So every picture is rendered once, and later once encoded
to latents; what varies from batch to batch is which scenes and which wording of each caption.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

from promptcast.training.shapes import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    caption,
    parse_caption,
    render,
)

UNCONDITIONAL_SHARE = 0.1  # captions replaced by "" to learn classifier-free guidance

# What the text encoder is taught to say about a caption: each attribute's value, or that the
# caption does not name it ("-"), which is not the same as any value.
LABELS: dict[str, tuple[str, ...]] = {
    "shape": (*SHAPES, "-"),
    "colour": (*COLOURS, "-"),
    "size": (*SIZES, "-"),
    "position": (*POSITIONS, "-"),
    "background": (*COLOURS, "-"),
}


def all_scenes() -> list[Scene]:
    return [
        Scene(shape, colour, size, position, background)
        for shape in SHAPES for colour in COLOURS for size in SIZES for position in POSITIONS
        for background in COLOURS if background != colour
    ]


def pictures(scenes: Sequence[Scene], size: int) -> torch.Tensor:
    """(N, 3, size, size) in [-1, 1], as the autoencoder sees pictures."""
    stacked = np.stack([render(s, size) for s in scenes])  # (N, H, W, 3) uint8
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def captions(scenes: Sequence[Scene], rng: random.Random, unconditional: float = 0.0) -> list[str]:
    return ["" if rng.random() < unconditional else caption(s, rng) for s in scenes]


def labels(texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per attribute, (N,) class indices of what each text names."""
    named = [parse_caption(t) for t in texts]
    return {
        attr: torch.tensor([values.index(n.get(attr, "-")) for n in named])
        for attr, values in LABELS.items()
    }


def tokens(tokenizer: object, texts: Sequence[str]) -> torch.Tensor:
    """(N, 77) ids padded as the engine pads them: the text encoder learns what the UNet will
    see at serving time, pad positions included."""
    ids: torch.Tensor = tokenizer(  # type: ignore[operator]
        list(texts), padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    return ids
