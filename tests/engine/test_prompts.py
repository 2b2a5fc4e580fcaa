"""Prompts to conditioning (engine/prompts.py): cached, and the misses of a batch encoded
together in one call of the text encoder(s), on the embedded model (SD-shaped) and on the
tiny SDXL-Turbo of the hub fixtures (two encoders and a pooled embedding)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from promptcast.config import EngineConfig
from promptcast.core.scheduler import RenderRequest
from promptcast.engine import prompts
from promptcast.engine.pipeline import Engine
from promptcast.engine.prompt_cache import LRUCache
from promptcast.engine.prompts import (
    Conditioning,
    PromptEncoder,
    fit,
    fits_from_unpadded,
    padded_ids,
)


@pytest.fixture(scope="module")
def sdxl(hub_cache: Path) -> Engine:
    eng = Engine(EngineConfig(preset="sdxl-turbo"))
    eng.load()
    return eng


def fresh_encoder(eng: Engine, cache_size: int = 64) -> PromptEncoder:
    """A second encoder on the same components, with an empty cache of its own."""
    return PromptEncoder(eng.c, eng.device, "eager", {}, eng.config.batch_sizes, LRUCache(cache_size))


def same(a: Conditioning, b: Conditioning) -> bool:
    pooled = (a.pooled is None and b.pooled is None) or (
        a.pooled is not None and b.pooled is not None and torch.allclose(a.pooled, b.pooled, atol=1e-5))
    return a.embeds.shape == b.embeds.shape and torch.allclose(a.embeds, b.embeds, atol=1e-5) and pooled


class Recorder:
    """Wraps a PromptEncoder's text-encoder call and records the token-id shapes it gets."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.shapes: list[list[tuple[int, ...]]] = []

    def __call__(self, *ids: torch.Tensor) -> Any:
        self.shapes.append([tuple(i.shape) for i in ids])
        return self.call(*ids)


def test_the_new_prompts_of_a_batch_run_the_text_encoder_once(
    engine: Engine, monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = Recorder(engine.prompts._call)
    monkeypatch.setattr(engine.prompts, "_call", recorder)
    engine.render(RenderRequest("a prompt this test saw before", 1, 2, 64, 64))
    hits, misses = engine.prompt_cache.hits, engine.prompt_cache.misses
    texts = ["a new prompt one", "a prompt this test saw before", "a new prompt two",
             "a new prompt one", "a new prompt three"][: engine.max_batch]
    frames = engine.render_batch([RenderRequest(t, i, 2, 64, 64) for i, t in enumerate(texts)])
    new = len(set(texts) - {"a prompt this test saw before"})
    # One call for the batch (after the one for the first render), its rows the new texts once each.
    assert recorder.shapes[1:] == [[(new, 77)]]
    # A text met twice in one batch is encoded once: its second use is a hit.
    want = [t not in texts[:i] and t != "a prompt this test saw before" for i, t in enumerate(texts)]
    assert [not f.prompt_cache_hit for f in frames] == want
    assert engine.prompt_cache.misses - misses == new
    assert engine.prompt_cache.hits - hits == len(texts) - new


@pytest.mark.parametrize("arch", ["sd", "sdxl"])
def test_prompts_encoded_together_match_prompts_encoded_alone(
    engine: Engine, sdxl: Engine, arch: str,
) -> None:
    eng = engine if arch == "sd" else sdxl
    texts = ["a red circle", "a blue square on the left", "", "a green triangle"]
    together = [c for c, hit in fresh_encoder(eng).lookup(texts)]
    for text, cond in zip(texts, together, strict=True):
        alone, hit = fresh_encoder(eng).lookup([text])[0]
        assert not hit and same(cond, alone)
        assert cond.embeds.shape[:2] == (1, 77)
        assert (cond.pooled is not None) == (arch == "sdxl")
    assert not same(together[0], together[1])


def test_a_cache_smaller_than_the_batch_still_serves_every_prompt(engine: Engine) -> None:
    small = fresh_encoder(engine, cache_size=1)
    texts = ["one red circle", "two blue squares", "three green triangles"]
    got = small.lookup(texts)
    assert [hit for _, hit in got] == [False, False, False] and len(small.cache) == 1
    for text, (cond, _) in zip(texts, got, strict=True):
        assert same(cond, fresh_encoder(engine).lookup([text])[0][0])


def test_truncation_is_told_per_prompt_of_a_batch(sdxl: Engine) -> None:
    looked_up = fresh_encoder(sdxl).lookup(["short", " ".join(["word"] * 76), " ".join(["word"] * 75)])
    assert [c.truncated for c, _ in looked_up] == [False, True, False]


TEXTS = ["a red circle", "", "  spaces   around  ", "UPPER case, punctuation; and 123 numbers!",
         "naïve café — 東京 🎨", " ".join(["word"] * 75), " ".join(["word"] * 76),
         " ".join(["a long prompt"] * 40)]


@pytest.mark.parametrize("arch", ["sd", "sdxl"])
def test_token_ids_fitted_from_one_tokenization_are_the_tokenizers_own(
    engine: Engine, sdxl: Engine, arch: str,
) -> None:
    eng = engine if arch == "sd" else sdxl
    encoder = fresh_encoder(eng)
    first = eng.c.tokenizer
    if arch == "sd":
        assert encoder._sources == [first]
    else:  # the second's pad token "!" is special: it splits "!?" where the first does not
        assert encoder._sources == [first, eng.c.tokenizer_2]
        assert not fits_from_unpadded(eng.c.tokenizer_2, first)
    for tokenizer, source in zip(encoder._tokenizers, encoder._sources, strict=True):
        fitted = torch.tensor([fit(tokens, tokenizer) for tokens in source(TEXTS).input_ids])
        assert torch.equal(fitted, padded_ids(tokenizer, TEXTS))


def test_a_tokenizer_with_another_vocabulary_tokenizes_on_its_own(
    engine: Engine, tmp_path: Path,
) -> None:
    # The embedded tokenizer with the ids of two words swapped: same files otherwise.
    engine.c.tokenizer.save_pretrained(tmp_path)
    saved = tmp_path / "tokenizer.json"
    spec = json.loads(saved.read_text())
    vocab = spec["model"]["vocab"]
    vocab["cat</w>"], vocab["dog</w>"] = vocab["dog</w>"], vocab["cat</w>"]  # no probe has them
    saved.write_text(json.dumps(spec))
    swapped = type(engine.c.tokenizer).from_pretrained(tmp_path)
    assert not fits_from_unpadded(swapped, engine.c.tokenizer)
    assert fits_from_unpadded(engine.c.tokenizer, engine.c.tokenizer)


def test_the_tokenizers_own_padding_gives_the_same_conditioning(engine: Engine, sdxl: Engine) -> None:
    for eng in (engine, sdxl):
        fast, own = fresh_encoder(eng), fresh_encoder(eng)
        own._sources = [None] * len(own._sources)  # as for tokenizers `fit` does not match
        for (a, _), (b, _) in zip(fast.lookup(TEXTS), own.lookup(TEXTS), strict=True):
            assert same(a, b) and a.truncated == b.truncated
        assert [c.truncated for c, _ in fast.lookup(TEXTS)] == [False] * 5 + [False, True, True]


def test_cached_embeddings_do_not_share_the_batch_they_were_encoded_in(engine: Engine) -> None:
    # A captured call's outputs are overwritten by its next replay: the cache keeps copies.
    (a, _), (b, _) = fresh_encoder(engine).lookup(["first of two", "second of two"])
    assert a.embeds.untyped_storage().data_ptr() != b.embeds.untyped_storage().data_ptr()
    assert a.embeds.untyped_storage().nbytes() == a.embeds.numel() * a.embeds.element_size()


def test_a_text_encoder_that_cannot_compile_runs_eager(
    engine: Engine, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = prompts.text_encoder_call

    def untraceable(c: Any) -> Any:
        inner = real(c)

        def call(ids: torch.Tensor) -> Any:
            if ids.sum().item() < 0:  # a data-dependent branch: dynamo refuses it (fullgraph)
                raise AssertionError
            return inner(ids)

        return call

    monkeypatch.setattr(prompts, "text_encoder_call", untraceable)
    encoder = PromptEncoder(engine.c, engine.device, "compile", {}, (1,), LRUCache(8))
    with caplog.at_level("WARNING"):
        (cond, hit), = encoder.lookup(["a prompt for an eager encoder"])
    assert not hit and same(cond, fresh_encoder(engine).lookup(["a prompt for an eager encoder"])[0][0])
    assert "the text encoder could not be compiled (" in caplog.text
    assert encoder.call.mode == "eager" and (encoder.call.fallback or "").startswith("could not be compiled")


def test_a_long_prompt_is_cut_without_a_warning_of_indexing_errors(sdxl: Engine) -> None:
    # transformers warns once per tokenizer of a text longer than 77 tokens that running it
    # "will result in indexing errors"; `fit` cuts it as the encoder's own call does, so the
    # warning is untrue, and the probes at every start have such a text.
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    for tokenizer in (sdxl.c.tokenizer, sdxl.c.tokenizer_2):  # warned before, in another test?
        tokenizer.deprecation_warnings.pop("sequence-length-is-longer-than-the-specified-maximum", None)
    handler = Keep()
    logging.getLogger("transformers").addHandler(handler)  # it does not propagate to the root
    try:
        encoder = fresh_encoder(sdxl)  # tokenizes prompts.PROBES
        [(cond, _)] = encoder.lookup([" ".join(["word"] * 90)])
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert cond.truncated
    assert not [m for m in seen if "indexing errors" in m], seen
