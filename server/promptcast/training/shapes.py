"""The synthetic domain the default model learns: one coloured shape on a plain background,
with a caption that describes it in varied words.

Everything is drawn here, deterministically from a seed, so the data needs no download and the
evaluation can compare a generated picture with this module's own render of the same caption.

A scene has five attributes: shape, colour, size, position and background. A caption always
names the colour and the shape (what the demo edits) and leaves out the size, the position or the
background now and then, so the model learns to fill them in itself.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (40, 170, 70),
    "cyan": (40, 200, 210),
    "blue": (40, 80, 220),
    "purple": (140, 60, 190),
    "pink": (245, 130, 180),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SIZES = {"small": 0.24, "big": 0.46}  # the shape's extent, as a fraction of the image side
POSITIONS: dict[str, tuple[float, float]] = {  # the shape's centre, as fractions of width, height
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
    "centre": (0.5, 0.5),
}
POSITION_PHRASES = {
    "left": ("on the left", "at the left", "to the left"),
    "right": ("on the right", "at the right", "to the right"),
    "top": ("at the top", "near the top", "on top"),
    "bottom": ("at the bottom", "near the bottom", "on the bottom"),
    "centre": ("in the centre", "in the middle", "in the center"),
}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "big": ("big", "large", "huge")}
SHAPE_WORDS = {"circle": ("circle", "disc", "round dot"), "square": ("square", "box"),
               "triangle": ("triangle",), "star": ("star",)}
SUPERSAMPLE = 4  # drawn larger, then shrunk: smooth edges without a blur


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    position: str
    background: str


def sample_scene(rng: random.Random) -> Scene:
    colour = rng.choice(list(COLOURS))
    background = rng.choice([c for c in COLOURS if c != colour])
    return Scene(rng.choice(SHAPES), colour, rng.choice(list(SIZES)), rng.choice(list(POSITIONS)),
                 background)


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """(size, size, 3) uint8 RGB."""
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    cx, cy = (f * big for f in POSITIONS[scene.position])
    r = SIZES[scene.size] * big / 2
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif scene.shape == "square":
        s = r * 0.9  # a square of the same extent looks bigger than a circle; even them out
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif scene.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)],
                     fill=fill)
    else:  # a five-pointed star
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.42
            angle = -np.pi / 2 + k * np.pi / 5
            points.append((cx + radius * np.cos(angle), cy + radius * np.sin(angle)))
        draw.polygon(points, fill=fill)
    out: np.ndarray = np.asarray(image.resize((size, size), Image.Resampling.BOX))
    return out


def caption(scene: Scene, rng: random.Random) -> str:
    """A description of `scene` in one of several wordings; size, position and background are
    each left out a quarter of the time."""
    size = rng.choice(SIZE_WORDS[scene.size]) if rng.random() > 0.25 else ""
    where = rng.choice(POSITION_PHRASES[scene.position]) if rng.random() > 0.25 else ""
    background = f"on a {scene.background} background" if rng.random() > 0.25 else ""
    shape = rng.choice(SHAPE_WORDS[scene.shape])
    thing = " ".join(w for w in (size, scene.colour, shape) if w)
    form = rng.randrange(3)
    if form == 0:
        parts = [f"a {thing}", where, background]
    elif form == 1:
        parts = [f"{thing}", background, where]
    else:
        parts = [f"a picture of a {thing}", where, background]
    return " ".join(p for p in parts if p)


def parse_caption(text: str) -> dict[str, str]:
    """The attributes a caption (or a user's prompt) names, for evaluation: any of shape,
    colour, size, position, background."""
    text = text.lower()
    found: dict[str, str] = {}
    bg = re.search(r"on an? (\w+) background", text)
    if bg and bg.group(1) in COLOURS:
        found["background"] = bg.group(1)
        text = text[: bg.start()] + text[bg.end():]
    for name, words in SHAPE_WORDS.items():
        if any(re.search(rf"\b{w}\b", text) for w in words):
            found["shape"] = name
    for colour in COLOURS:
        if re.search(rf"\b{colour}\b", text):
            found["colour"] = colour
    for name, words in SIZE_WORDS.items():
        if any(re.search(rf"\b{w}\b", text) for w in words):
            found["size"] = name
    for name, phrases in POSITION_PHRASES.items():
        if any(p in text for p in phrases):
            found["position"] = name
    return found


def examples(seed: int, size: int = 64) -> Iterator[tuple[np.ndarray, str, Scene]]:
    """An endless, deterministic stream of (image, caption, scene)."""
    rng = random.Random(seed)
    while True:
        scene = sample_scene(rng)
        yield render(scene, size), caption(scene, rng), scene
