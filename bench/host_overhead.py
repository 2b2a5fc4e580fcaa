"""The engine's own work per frame, with the model taken out.

The UNet and the decoder of the embedded tiny model are replaced by stand-ins that return zeros
at once (the prompt is cached, so the text encoder does not run), and `Engine.render` is timed:
what is left is everything the engine does around the model on the CPU (prompt lookup, noise,
the sampler's arithmetic, batching, the pixels back). On a GPU that is work the device waits
for wherever the CPU has to wait for the device first (a host sync), and work that competes
with the server's event loop for the interpreter.

Each sampler is timed two ways in the same run: with its plan (engine/sampling.py: the step's
arithmetic worked out once per schedule) and with diffusers' own `scheduler.step`, as a
scheduler without a plan runs.

Then img2img with a new 512 px init image every frame (a creative tool's live canvas): the
engine thread's time per frame when it decodes the image itself, and when the image was decoded
beside it (`Engine.prefetch`, which the server calls as the image arrives; the decode is waited
for before the frame is timed, as while the GPU renders the frame before).

    .venv/bin/python bench/host_overhead.py [--iterations 500]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from contextlib import ExitStack
from types import SimpleNamespace
from typing import Any
from unittest import mock

import numpy as np
import torch
from diffusers import EulerAncestralDiscreteScheduler
from PIL import Image

from promptcast.config import EngineConfig
from promptcast.core.scheduler import RenderRequest
from promptcast.engine import pipeline
from promptcast.engine.archs import build_components
from promptcast.engine.benchmark import median_ms
from promptcast.engine.pipeline import Engine

# sampler -> (preset, scheduler class to hand over instead of the model's, or None)
SAMPLERS: dict[str, tuple[str, Any]] = {
    "lcm": ("tiny", None),
    "euler": ("sd-turbo", None),  # the turbo recipe: Euler, trailing timesteps
    "ancestral euler": ("sd-turbo", EulerAncestralDiscreteScheduler),  # as SDXL-Turbo ships
}
SIZE = 64
IMAGE_SIZE = 512
ROUNDS = 5


def engine_without_model(preset: str, scheduler_cls: Any, planned: bool, size: int = SIZE) -> Engine:
    components = build_components("tiny", torch.device("cpu"), torch.float32)
    if scheduler_cls is not None:
        components.scheduler = scheduler_cls.from_config(components.scheduler.config)
    eng = Engine(EngineConfig(preset=preset, sizes=((size, size),), size=(size, size), cpu_threads=1))
    with ExitStack() as stack:
        if not planned:  # as for a scheduler engine/sampling.py has no plan for
            stack.enter_context(mock.patch.object(pipeline, "supports", lambda _: False))
        eng.load(components)

    def unet(sample: torch.Tensor, *_: Any, **__: Any) -> tuple[torch.Tensor]:
        return (torch.zeros_like(sample),)

    def decode(latents: torch.Tensor, **_: Any) -> tuple[torch.Tensor]:
        b, _, h, w = latents.shape
        return (torch.zeros(b, 3, h * eng.vae_scale, w * eng.vae_scale),)

    eng.c.unet.forward = unet  # type: ignore[method-assign]
    eng.c.vae.decode = decode  # type: ignore[method-assign]
    return eng


def canvases(n: int, size: int, fmt: str) -> list[bytes]:
    """n different painted canvases (a gradient and 30 random rectangles), encoded as `fmt`."""
    rng = np.random.default_rng(0)
    gx, gy = np.meshgrid(np.linspace(0, 255, size), np.linspace(0, 255, size))
    out = []
    for _ in range(n):
        pixels = np.stack([gx, gy, 255 - gx], -1).astype(np.uint8)
        for _ in range(30):
            x, y = rng.integers(0, size - 40, 2)
            pixels[y:y + 40, x:x + 40] = rng.integers(0, 255, 3)
        data = io.BytesIO()
        Image.fromarray(pixels).save(data, format=fmt)
        out.append(data.getvalue())
    return out


def img2img_engine() -> Engine:
    eng = engine_without_model("tiny", None, True, IMAGE_SIZE)

    def encode(x: torch.Tensor, **_: Any) -> Any:  # the image encoder's stand-in
        b, _, h, w = x.shape
        return SimpleNamespace(latents=torch.zeros(b, 4, h // eng.vae_scale, w // eng.vae_scale))

    eng.c.vae.encode = encode  # type: ignore[method-assign]
    return eng


def img2img_ms(eng: Engine, images: list[bytes], prefetched: bool) -> float:
    """Median engine-thread ms of a 2-step img2img frame, a new init image each frame."""
    times = []
    for data in images:
        req = RenderRequest("a red circle", 1, 2, IMAGE_SIZE, IMAGE_SIZE, data, 0.5)
        if prefetched:
            decode = eng.prefetch(req)
            assert decode is not None
            decode.result()  # decoded while the GPU was busy with the frame before
        start = time.perf_counter()
        eng.render(req)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def median_us(eng: Engine, steps: int, iterations: int) -> float:
    req = RenderRequest("a red circle", 1, steps, SIZE, SIZE)
    eng.render(req)  # the prompt into the cache
    return median_ms(lambda: eng.render(req), torch.device("cpu"), iterations) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| sampler | steps | with its plan (µs/frame) | diffusers' step (µs/frame) | ratio |")
    print("|---|---|---|---|---|")
    for name, (preset, scheduler_cls) in SAMPLERS.items():
        planned = engine_without_model(preset, scheduler_cls, True)
        unplanned = engine_without_model(preset, scheduler_cls, False)
        for steps in (1, 2, 4):
            # Alternated rounds, the quickest round's median each: a slow spell on a shared
            # machine inflates some rounds, and nothing makes one faster than the code is.
            a, b = [], []
            for _ in range(ROUNDS):
                a.append(median_us(planned, steps, args.iterations // ROUNDS))
                b.append(median_us(unplanned, steps, args.iterations // ROUNDS))
            ours, theirs = min(a), min(b)
            print(f"| {name} | {steps} | {ours:.0f} | {theirs:.0f} | {theirs / ours:.2f}x |")
    eng = img2img_engine()
    print()
    print(f"| init image ({IMAGE_SIZE} px, new each frame) | decoded on the engine thread (ms/frame) "
          "| decoded beside it (ms/frame) | difference (ms/frame) |")
    print("|---|---|---|---|")
    for fmt in ("PNG", "JPEG"):
        images = canvases(args.iterations // ROUNDS, IMAGE_SIZE, fmt)
        a, b = [], []
        for _ in range(ROUNDS):
            a.append(img2img_ms(eng, images, prefetched=False))
            b.append(img2img_ms(eng, images, prefetched=True))
        print(f"| {fmt} | {min(a):.2f} | {min(b):.2f} | {min(a) - min(b):.2f} |")


if __name__ == "__main__":
    main()
