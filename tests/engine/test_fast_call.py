"""FastCall's fallbacks (engine/compile.py): a function the compiler or the CUDA-graph capture
cannot handle runs in a lesser mode, with a warning, instead of stopping the server; a
recompile refused by `error_on_recompile` is still an error."""

from __future__ import annotations

import pytest
import torch

from promptcast.engine import compile as fast
from promptcast.engine.compile import CaptureFailed, FastCall


def untraceable(x: torch.Tensor) -> torch.Tensor:
    if x.sum().item() > 0:  # a data-dependent Python branch: fullgraph compiling refuses it
        return x * 2
    return x - 1


def test_a_function_that_cannot_compile_runs_eager(caplog: pytest.LogCaptureFixture) -> None:
    call = FastCall("untraceable", untraceable, "compile")
    x = torch.ones(3)
    with caplog.at_level("WARNING"):
        assert torch.equal(call(x), x * 2)
    assert call.mode == "eager" and (call.fallback or "").startswith("could not be compiled (")
    assert "the untraceable could not be compiled (" in caplog.text and "it runs eager" in caplog.text
    assert torch.equal(call(-x), -x - 1)  # and keeps running


def test_a_recompile_refused_on_the_hot_path_is_raised_not_hidden() -> None:
    call = FastCall("doubler", lambda x: x * 2, "compile")
    call(torch.ones(2))
    with torch._dynamo.config.patch(error_on_recompile=True), pytest.raises(
            torch._dynamo.exc.RecompileError):
        call(torch.ones(3))  # a shape never warmed up
    assert call.mode == "compile" and call.fallback is None


def test_a_function_that_cannot_be_captured_runs_compiled_without_graphs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    # Capture needs a GPU; here it fails as it does when something in the function syncs.
    class Uncapturable:
        def __init__(self, *_: object) -> None:
            raise CaptureFailed("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(fast, "CapturedCall", Uncapturable)
    calls: list[torch.Tensor] = []
    call = FastCall("syncing", lambda x: calls.append(x) or x + 1, "cuda-graphs", whole=False)
    with caplog.at_level("WARNING"):
        out = call(torch.zeros(2))
    assert torch.equal(out, torch.ones(2)) and len(calls) == 1
    assert call.mode == "compile"
    assert call.fallback == ("could not be captured in a CUDA graph (operation not permitted "
                             "when stream is capturing)")
    assert "it runs compiled, without CUDA graphs" in caplog.text
    call(torch.zeros(2))
    assert len(calls) == 2  # no second capture attempt
