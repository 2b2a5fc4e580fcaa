"""The scorer reads the generator's own renders exactly, and the evaluation runs on the engine."""

from __future__ import annotations

import itertools

import numpy as np

from promptcast.engine.pipeline import Engine
from promptcast.training.evaluate import ATTRIBUTES, evaluate_engine, read_scene, score
from promptcast.training.shapes import examples


def test_read_scene_recovers_every_attribute_of_clean_renders() -> None:
    for size in (64, 128):
        for pixels, _, scene in itertools.islice(examples(11, size=size), 150):
            assert read_scene(pixels) == {a: getattr(scene, a) for a in ATTRIBUTES}, scene


def test_read_scene_survives_noise_like_a_models() -> None:
    rng = np.random.default_rng(0)
    right = 0
    data = list(itertools.islice(examples(12), 200))
    for pixels, _, scene in data:
        noisy = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
        right += read_scene(noisy) == {a: getattr(scene, a) for a in ATTRIBUTES}
    assert right >= 190


def test_score_counts_only_what_captions_name() -> None:
    data = list(itertools.islice(examples(13), 50))
    perfect = score([p for p, _, _ in data], [t for _, t, _ in data])
    assert perfect == dict.fromkeys(ATTRIBUTES, 1.0)
    # Pictures paired with the wrong captions score far lower on colour.
    shuffled = score([p for p, _, _ in data], [t for _, t, _ in data[1:] + data[:1]])
    assert shuffled["colour"] < 0.5


def test_evaluation_runs_on_the_embedded_model(engine: Engine) -> None:
    rows = evaluate_engine(engine, samples=4, steps=[1, 2])
    assert [r["steps"] for r in rows] == [1, 2]
    for r in rows:
        assert r["samples"] == 4 and r["ms_per_frame"] > 0
        assert 0.0 <= r["colour"] <= 1.0 and 0.0 <= r["shape"] <= 1.0
