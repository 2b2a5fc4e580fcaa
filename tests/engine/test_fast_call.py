"""FastCall's fallbacks (engine/compile.py): a function the compiler or the CUDA-graph capture
cannot handle runs in a lesser mode, with a warning, instead of stopping the server; a
recompile refused by `error_on_recompile` is still an error."""

from __future__ import annotations

import contextlib

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


class FakeStream:
    def __init__(self, name: str) -> None:
        self.name = name

    def wait_stream(self, other: FakeStream) -> None:
        pass


@pytest.mark.parametrize(("inside", "raised"), [
    (RuntimeError("operation not permitted when stream is capturing"), CaptureFailed),
    # Out of memory is not the function's fault: raised as it is, for Engine.recover.
    (torch.OutOfMemoryError("CUDA out of memory"), torch.OutOfMemoryError),
])
def test_a_failed_capture_gives_the_caller_its_stream_back(
    monkeypatch: pytest.MonkeyPatch, inside: RuntimeError, raised: type[Exception],
) -> None:
    # torch.cuda.graph makes its capture stream current on entering; when the capture failed,
    # ending it raises before it leaves that stream (torch/cuda/graphs.py). CapturedCall is
    # driven here with stand-ins for torch.cuda that behave so.
    current = [FakeStream("caller")]

    class FailingCapture:
        def __init__(self, graph: object, pool: object) -> None:
            pass

        def __enter__(self) -> None:
            current[0] = FakeStream("capture")

        def __exit__(self, *exc: object) -> None:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    monkeypatch.setattr(torch.cuda, "Stream", lambda: FakeStream("warm-up"))
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *device: current[0])
    monkeypatch.setattr(torch.cuda, "set_stream", lambda s: current.__setitem__(0, s))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", object)
    monkeypatch.setattr(torch.cuda, "graph", FailingCapture)

    def fails_while_capturing(x: torch.Tensor) -> torch.Tensor:
        if current[0].name == "capture":
            raise inside
        return x + 1

    with pytest.raises(raised, match=f"^{inside}$"):
        fast.CapturedCall(fails_while_capturing, (torch.zeros(2),), pool=None)
    assert current[0].name == "caller"
