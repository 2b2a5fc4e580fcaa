"""Prompt text -> the UNet's conditioning: tokenized, encoded, cached.

Every keystroke is a new prompt, so on the hot path the cache mostly misses and the text
encoder runs once per frame. Eager, it is launch-bound on a GPU: the first H200 run measured
about 9 ms for SD 2.1's 23-layer encoder and about 35 ms for SDXL's two (44 layers), more than
the UNet step itself (docs/performance.md). So the encoder is treated like the UNet: one
function of fixed-shape token tensors, compiled and captured per batch bucket
(engine/compile.py), and the prompts a batch has never seen are encoded together in one call,
padded to a bucket.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from promptcast.engine.compile import FastCall
from promptcast.engine.loading import Components
from promptcast.engine.prompt_cache import LRUCache
from promptcast.engine.transfer import to_device


@dataclass
class Conditioning:
    """A prompt as the UNet takes it. Cached per prompt text; owns its memory."""

    embeds: torch.Tensor  # (1, 77, D) text encoder hidden states
    pooled: torch.Tensor | None  # (1, P) SDXL's pooled text embedding, else None
    truncated: bool = False  # the prompt had more tokens than the encoder reads; the rest is ignored


TextOutput = tuple[torch.Tensor, torch.Tensor | None]


def text_encoder_call(c: Components) -> Callable[..., TextOutput]:
    """The text encoder(s) as one function of token ids, what compile and capture want:
    SD: (ids (B, 77)) -> (hidden (B, 77, D), None);
    SDXL: (ids (B, 77), ids_2 (B, 77)) -> (embeds (B, 77, D1 + D2), pooled (B, P))."""
    if c.arch == "sd":
        def call_sd(ids: torch.Tensor) -> TextOutput:
            return c.text_encoder(ids)[0], None

        return call_sd

    def call_sdxl(ids: torch.Tensor, ids_2: torch.Tensor) -> TextOutput:
        # The penultimate hidden states of both encoders side by side, plus the second encoder's
        # pooled projection, as StableDiffusionXLPipeline.encode_prompt builds them.
        out_1 = c.text_encoder(ids, output_hidden_states=True)
        out_2 = c.text_encoder_2(ids_2, output_hidden_states=True)
        embeds = torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1)
        return embeds, out_2[0]

    return call_sdxl


class PromptEncoder:
    """Texts -> Conditioning, from the cache or from one batched call of the text encoder(s).

    `mode` and `options` are the engine's (FastCall); `compiled` False: captured (in
    "cuda-graphs" mode) but not compiled, for the shorter cold start of `--compile-scope
    blocks`. `batch_sizes` are its buckets: a batch of misses is padded to the smallest that
    holds it (eager calls are not padded). `cache` holds the embeddings (the engine's, whose
    hit and miss counts go to /metrics). Call from the engine thread."""

    def __init__(self, c: Components, device: torch.device, mode: str,
                 options: dict[str, Any], batch_sizes: Sequence[int],
                 cache: LRUCache[Conditioning], compiled: bool = True) -> None:
        self._c = c
        self._device = device
        self._tokenizers = [c.tokenizer] if c.arch == "sd" else [c.tokenizer, c.tokenizer_2]
        # Token ids are cut and padded (`fit`) from an unpadded tokenization, which also tells
        # how long the prompt was, and a tokenizer shares the first one's where that gives its
        # own ids: one tokenization a miss instead of two (SDXL: two instead of three; its
        # second tokenizer's pad token "!" is special and splits text). On this project's CPU
        # a miss's tokenizing took 0.16 ms instead of 0.38 (SDXL 0.36 instead of 0.53), on
        # every keystroke's frame. The sources: the tokenizer whose unpadded ids are fitted, or
        # None for the tokenizer's own padded call.
        self._sources = [
            next((s for s in (c.tokenizer, t) if fits_from_unpadded(t, s)), None)
            for t in self._tokenizers
        ]
        call = text_encoder_call(c)
        if mode != "eager" and compiled:
            # One eager call first: transformers sets up its hidden-state recording (SDXL asks
            # for the penultimate layer's) on the first call, under a lock dynamo cannot trace.
            with torch.inference_mode():
                call(*[torch.zeros(1, self.max_tokens, dtype=torch.long, device=device)
                       for _ in self._tokenizers])
        self._call = FastCall("text encoder", call, mode, options, whole=compiled)
        self._buckets = sorted(batch_sizes) if mode != "eager" else []
        self.cache = cache

    @property
    def call(self) -> FastCall[TextOutput]:
        """The text encoder(s) as the engine runs them (compiled, captured, or eager)."""
        return self._call

    @property
    def max_tokens(self) -> int:
        return int(self._c.tokenizer.model_max_length)

    def lookup(self, texts: Sequence[str]) -> list[tuple[Conditioning, bool]]:
        """Each text's conditioning and whether it came from the cache. Texts not cached are
        encoded together; a text repeated within `texts` is encoded once (its repeats count as
        hits)."""
        # The key names the model too, so a cache can never serve another model's embedding.
        keys = [(self._c.source, "text_encoder", t) for t in texts]
        served: dict[int, Conditioning] = {}
        missing: dict[tuple[str, str, str], str] = {}  # key -> text, in order of first use
        for i, (key, text) in enumerate(zip(keys, texts, strict=True)):
            if key in missing:
                continue  # a repeat of a text this call encodes: served once it is
            cond = self.cache.get(key)
            if cond is None:
                missing[key] = text
            else:
                served[i] = cond
        todo = list(missing.items())
        fresh: dict[tuple[str, str, str], Conditioning] = {}
        step = self._max_rows(len(todo))
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            for (key, _), cond in zip(chunk, self._encode([t for _, t in chunk]), strict=True):
                fresh[key] = cond
                self.cache.put(key, cond)
        out: list[tuple[Conditioning, bool]] = []
        for i, key in enumerate(keys):
            if i in served:
                out.append((served[i], True))
            elif key in missing:
                del missing[key]  # the text's first use: the miss
                out.append((fresh[key], False))
            else:  # a repeat within this call, served by the same encode: a hit
                self.cache.hits += 1
                out.append((fresh[key], True))
        return out

    def _max_rows(self, n: int) -> int:
        return max(self._buckets) if self._buckets else max(n, 1)

    def _encode(self, texts: list[str]) -> list[Conditioning]:
        """Encode up to one bucket's worth of texts in one call."""
        rows = min((b for b in self._buckets if b >= len(texts)), default=len(texts))
        padded = [*texts, *[texts[-1]] * (rows - len(texts))]
        unpadded: dict[int, list[list[int]]] = {}  # id(source) -> its ids, BOS and EOS included
        ids = []  # each (rows, 77)
        for tokenizer, source in zip(self._tokenizers, self._sources, strict=True):
            if source is None:
                ids.append(to_device(padded_ids(tokenizer, padded), self._device))
                continue
            if id(source) not in unpadded:
                unpadded[id(source)] = unpadded_ids(source, padded)
            fitted = [fit(tokens, tokenizer) for tokens in unpadded[id(source)]]
            ids.append(to_device(torch.tensor(fitted), self._device))
        # (One this torch cannot compile, another transformers version say, runs eager: FastCall
        # falls back at the bucket's first call, at warm-up.)
        embeds, pooled = self._call(*ids)  # (rows, 77, D), (rows, P) | None
        # Counted without truncation, to tell the client what was cut.
        counted = unpadded.get(id(self._c.tokenizer)) or unpadded_ids(self._c.tokenizer, texts)
        lengths = [len(tokens) for tokens in counted]
        # Row copies: a captured call's outputs are overwritten by its next replay, and a cached
        # row must not keep the whole batch alive.
        return [
            Conditioning(embeds[i:i + 1].clone(), None if pooled is None else pooled[i:i + 1].clone(),
                         lengths[i] > self.max_tokens)
            for i in range(len(texts))
        ]


def padded_ids(tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """(B, 77) token ids as the tokenizer pads and cuts them to the encoder's length (what
    diffusers' pipelines feed the text encoder)."""
    ids: torch.Tensor = tokenizer(
        texts, padding="max_length", max_length=tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    ).input_ids
    return ids


def unpadded_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Each text's token ids, BOS and EOS included, neither cut nor padded. Quietly: unasked,
    transformers warns of a prompt longer than the encoder's 77 tokens that running it "will
    result in indexing errors", which `fit` makes untrue (it cuts as the encoder's own call
    does); the server would log that at every start (PROBES has such a prompt)."""
    ids: list[list[int]] = tokenizer(texts, verbose=False).input_ids
    return ids


def fit(tokens: list[int], tokenizer: Any) -> list[int]:
    """Unpadded token ids (BOS ... EOS) cut or padded to the encoder's length, as the tokenizer
    does it: a long prompt keeps its first tokens and still ends with EOS."""
    n = int(tokenizer.model_max_length)
    if len(tokens) > n:
        return [*tokens[: n - 1], tokens[-1]]
    return tokens + [int(tokenizer.pad_token_id)] * (n - len(tokens))


# Prompts whose padded ids `fits_from_unpadded` compares: short, empty, unusual characters, and
# longer than any encoder reads.
PROBES = ["a red circle", "", "Ünïcode — emoji 🎨 & punctuation!?", " ".join(["word"] * 90)]


def fits_from_unpadded(tokenizer: Any, source: Any) -> bool:
    """Whether `fit` of `source`'s unpadded ids gives what `tokenizer`'s own padded call gives:
    the same vocabulary and splitting, and cutting and padding as `fit` does it."""
    if tokenizer is not source and tokenizer.get_vocab() != source.get_vocab():
        return False
    unpadded = unpadded_ids(source, PROBES)
    fitted = torch.tensor([fit(tokens, tokenizer) for tokens in unpadded])
    return torch.equal(fitted, padded_ids(tokenizer, PROBES))
