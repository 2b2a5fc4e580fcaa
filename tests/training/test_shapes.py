"""The synthetic shapes data: deterministic, every attribute drawn where the caption says."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from promptcast.training.shapes import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    caption,
    examples,
    parse_caption,
    render,
)


def test_the_stream_is_deterministic_from_its_seed() -> None:
    a = list(itertools.islice(examples(7), 20))
    b = list(itertools.islice(examples(7), 20))
    assert all(np.array_equal(x[0], y[0]) and x[1:] == y[1:] for x, y in zip(a, b, strict=True))
    c = list(itertools.islice(examples(8), 20))
    assert [x[1] for x in a] != [x[1] for x in c]


def test_every_attribute_value_occurs() -> None:
    scenes = [s for _, _, s in itertools.islice(examples(1, size=32), 600)]
    assert {s.shape for s in scenes} == set(SHAPES)
    assert {s.colour for s in scenes} == set(COLOURS) and len(COLOURS) >= 8
    assert {s.size for s in scenes} == set(SIZES)
    assert {s.position for s in scenes} == set(POSITIONS)
    assert all(s.background != s.colour for s in scenes)


def shape_mask(scene: Scene, size: int = 64) -> np.ndarray:
    pixels = render(scene, size).astype(int)
    return np.abs(pixels - np.array(COLOURS[scene.colour])).sum(axis=2) < 30  # (H, W)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("position", list(POSITIONS))
def test_the_shape_is_drawn_where_and_as_large_as_the_scene_says(shape: str, position: str) -> None:
    small = shape_mask(Scene(shape, "red", "small", position, "blue"))
    big = shape_mask(Scene(shape, "red", "big", position, "blue"))
    assert big.sum() > 2.5 * small.sum() > 0
    ys, xs = np.nonzero(big)
    cx, cy = xs.mean() / 64, ys.mean() / 64
    want_x, want_y = POSITIONS[position]
    assert abs(cx - want_x) < 0.08 and abs(cy - want_y) < 0.1
    # The background fills the rest.
    pixels = render(Scene(shape, "red", "small", position, "blue"))
    assert (pixels[0, 0] == COLOURS["blue"]).all()


def test_shapes_differ_from_each_other() -> None:
    masks = {s: shape_mask(Scene(s, "white", "big", "centre", "black")) for s in SHAPES}
    for a, b in itertools.combinations(SHAPES, 2):
        assert (masks[a] != masks[b]).sum() > 40, (a, b)


def test_captions_vary_and_say_only_what_is_true() -> None:
    rng = random.Random(3)
    seen = set()
    left_out = {"size": 0, "position": 0, "background": 0}
    for _, text, scene in itertools.islice(examples(3, size=16), 400):
        seen.add(text)
        named = parse_caption(text)
        assert named["colour"] == scene.colour and named["shape"] == scene.shape, text
        for attr in left_out:
            if attr in named:
                assert named[attr] == getattr(scene, attr), text
            else:
                left_out[attr] += 1
    assert len(seen) > 300  # varied wording
    assert all(50 < n < 170 for n in left_out.values()), left_out  # about a quarter each
    assert caption(Scene("star", "yellow", "small", "top", "black"), rng)


def test_a_users_prompt_parses_like_a_caption() -> None:
    assert parse_caption("A big RED circle on the left") == {
        "size": "big", "colour": "red", "shape": "circle", "position": "left"}
    assert parse_caption("a small yellow star at the top on a black background") == {
        "size": "small", "colour": "yellow", "shape": "star", "position": "top",
        "background": "black"}
