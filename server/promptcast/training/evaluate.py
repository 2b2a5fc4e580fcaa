"""Scoring pictures against their captions: what did the model draw, and is it what was asked?

`read_scene` recovers the five attributes from a picture of the shapes domain without any
learned model: the background is the colour of the border, the object is whatever differs
from it; its colour is the nearest palette colour to its core (the half of it farthest from
the background), its position the nearest anchor to its centroid, and its shape and size the
pair whose own render at that place overlaps it best.
On the generator's own renders it is exact (tested), so on a model's pictures it measures the
model, not the scorer.

    python -m promptcast.training.evaluate --samples 200 --steps 1,2,4
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from promptcast.training.shapes import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    examples,
    parse_caption,
    render,
)

PALETTE = np.array(list(COLOURS.values()), dtype=float)  # (K, 3)
NAMES = list(COLOURS)
ATTRIBUTES = ("colour", "shape", "size", "position", "background")


def _nearest_colour(rgb: np.ndarray) -> str:
    return NAMES[int(np.argmin(((PALETTE - rgb) ** 2).sum(axis=1)))]


def read_scene(pixels: np.ndarray) -> dict[str, str]:
    """pixels: (H, W, 3) uint8. The attributes drawn, as far as they can be read; an empty
    picture (no object) gives the background only."""
    img = pixels.astype(float)
    h, w, _ = img.shape
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])  # (2H+2W, 3)
    bg = np.median(border, axis=0)
    found = {"background": _nearest_colour(bg)}
    distance = np.sqrt(((img - bg) ** 2).sum(axis=2))  # (H, W)
    mask = distance > 60
    if mask.sum() < max(4, h * w // 400):
        return found
    # The colour of the object's core: the half of its pixels farthest from the background.
    # Its edge (anti-aliased, or blurred by a model) mixes in the background and says nothing
    # about what colour the object is: a yellow disc on blue has a greenish rim.
    core = mask & (distance >= np.median(distance[mask]))
    found["colour"] = _nearest_colour(np.median(img[core], axis=0))
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() / w, ys.mean() / h
    found["position"] = min(
        POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2
    )
    # Shape and size together: the reference render at that place that overlaps it best.
    best, best_iou = ("", ""), -1.0
    for shape, size in itertools.product(SHAPES, SIZES):
        ref = _mask(Scene(shape, "white", size, found["position"], "black"), h)
        iou = (ref & mask).sum() / max(1, (ref | mask).sum())
        if iou > best_iou:
            best, best_iou = (shape, size), iou
    found["shape"], found["size"] = best
    return found


@functools.lru_cache(maxsize=256)  # a few dozen reference scenes, each rendered once
def _mask(scene: Scene, size: int) -> np.ndarray:
    """(size, size) bool: where `scene`'s shape is (drawn white on black)."""
    mask: np.ndarray = render(scene, size)[:, :, 0] > 127
    return mask


def score(pictures: Sequence[np.ndarray], captions: Sequence[str]) -> dict[str, float]:
    """Per attribute: the share of pictures that show what their caption names (captions that
    leave an attribute out do not count for it)."""
    right: dict[str, int] = dict.fromkeys(ATTRIBUTES, 0)
    asked: dict[str, int] = dict.fromkeys(ATTRIBUTES, 0)
    for pixels, text in zip(pictures, captions, strict=True):
        want, got = parse_caption(text), read_scene(pixels)
        for attr, value in want.items():
            asked[attr] += 1
            right[attr] += got.get(attr) == value
    return {a: right[a] / asked[a] for a in ATTRIBUTES if asked[a]}


def evaluate(
    render: Callable[[str, int, int], np.ndarray], samples: int, steps: Sequence[int],
    size: int, seed: int = 1234,
) -> list[dict[str, Any]]:
    """Render `samples` held-out captions (a seed the training never uses) at each step count
    with `render(text, seed, steps)` and score them; one row per step count, with the median
    milliseconds per frame."""
    data = list(itertools.islice(examples(seed, size=size), samples))
    rng = random.Random(seed)
    rows = []
    for k in steps:
        pictures, times = [], []
        for _, text, _ in data:
            t0 = time.perf_counter()
            pictures.append(render(text, rng.randrange(2**32), k))
            times.append((time.perf_counter() - t0) * 1e3)
        rows.append({"steps": k, "samples": samples, "ms_per_frame": float(np.median(times)),
                     **score(pictures, [text for _, text, _ in data])})
    return rows


def evaluate_engine(
    engine: Any, samples: int, steps: Sequence[int], seed: int = 1234
) -> list[dict[str, Any]]:
    """`evaluate` through the serving engine, at its default size."""
    from promptcast.core.scheduler import RenderRequest

    width, height = engine.limits.default_size

    def render(text: str, seed: int, k: int) -> np.ndarray:
        frame: np.ndarray = engine.render(RenderRequest(text, seed, k, width, height)).pixels
        return frame

    return evaluate(render, samples, steps, width, seed)


def table(rows: Sequence[dict[str, Any]], label: str = "") -> str:
    """Markdown rows: `label` (e.g. "student") before the step count, if given."""
    head = ("| model " if label else "") + "| steps | " + " | ".join(ATTRIBUTES) + " | ms/frame |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        cells = [label] if label else []
        cells += [str(r["steps"]), *(f"{100 * r[a]:.0f}%" if a in r else "-" for a in ATTRIBUTES),
                  f"{r['ms_per_frame']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    import torch

    from promptcast.config import EngineConfig
    from promptcast.engine.pipeline import Engine

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the embedded one)")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--steps", default="1,2,4")
    args = parser.parse_args()
    torch.set_num_threads(1)
    engine = Engine(EngineConfig(model=args.model, device="cpu"))
    engine.load()
    rows = evaluate_engine(engine, args.samples, [int(s) for s in args.steps.split(",")])
    print(table(rows))
    print(json.dumps(rows))

if __name__ == "__main__":
    main()
