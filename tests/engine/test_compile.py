"""The compiled path on the CPU: inductor compiles every shape bucket at warm-up, and the hot
path never recompiles. (CUDA-graph capture runs only on a GPU: bench/gpu.sh.)

Compiling costs minutes on this machine, so one engine is compiled for the whole module, with
one size and batch sizes 1 and 4 (a batch of 3 is padded to 4: padding is tested too).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from promptcast.config import EngineConfig
from promptcast.core.scheduler import RenderRequest
from promptcast.engine.compile import compile_seconds
from promptcast.engine.pipeline import Engine

from .test_prompts import Recorder

SIZE = 64

# The module's engine compiles its text encoder, UNet and decoder for two batch sizes: about
# two minutes here, more on a busy machine.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compile-cache")


@pytest.fixture(scope="module")
def compiled(cache_dir: Path) -> Iterator[Engine]:
    eng = Engine(EngineConfig(compile="compile", sizes=((SIZE, SIZE),), size=(SIZE, SIZE),
                              batch_sizes=(1, 4), compile_cache=str(cache_dir)))
    eng.load()
    eng.warm_up()
    torch._dynamo.config.error_on_recompile = True  # from here on, a recompile is an error
    yield eng
    torch._dynamo.config.error_on_recompile = False


def reqs(n: int, text: str = "a red circle") -> list[RenderRequest]:
    return [RenderRequest(f"{text} {i}", 10 + i, 2, SIZE, SIZE) for i in range(n)]


def test_warm_up_compiled_every_bucket_into_the_cache(compiled: Engine, cache_dir: Path) -> None:
    assert compiled.mode == "compile" and compiled.prompts.call.compiles
    # img2img's image encoder (run as it is, captured on a GPU) had its first call per size too.
    assert not compiled._image_encoder.compiles and len(compiled._image_encoder._compiled) == 1
    assert any(cache_dir.rglob("*.py")), "inductor wrote no compiled code to the cache folder"
    with pytest.raises(ValueError, match=r"batch sizes \[3\] are not all among \[1, 4\]"):
        compiled.warm_up((3,))


def test_hot_path_never_recompiles(compiled: Engine) -> None:
    for n in (1, 3, 4, 2, 1):  # new prompts, seeds and batch sizes; 3 and 2 are padded to 4
        frames = compiled.render_batch(reqs(n, text=f"batch of {n}"))
        assert len(frames) == n and all(f.pixels.shape == (SIZE, SIZE, 3) for f in frames)
    # Warmed at 2 steps: one compiled call serves every step count.
    one, four = (compiled.render(RenderRequest("a red circle", 7, k, SIZE, SIZE)) for k in (1, 4))
    assert one.pixels.shape == four.pixels.shape == (SIZE, SIZE, 3)
    assert not np.array_equal(one.pixels, four.pixels)
    image = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), (0, 90, 200)).save(image, format="PNG")
    img2img = RenderRequest("a blue sea", 3, 2, SIZE, SIZE, image=image.getvalue(), strength=0.5)
    assert compiled.render(img2img).pixels.shape == (SIZE, SIZE, 3)


def test_new_prompts_are_encoded_in_one_call_padded_to_a_bucket(
    compiled: Engine, monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = Recorder(compiled.prompts._call)
    monkeypatch.setattr(compiled.prompts, "_call", recorder)
    frames = compiled.render_batch(reqs(3, text="three new prompts"))
    assert recorder.shapes == [[(4, 77)]]  # the text encoder's batch-4 bucket, warmed at start-up
    assert [f.prompt_cache_hit for f in frames] == [False, False, False]


def test_compiled_frames_match_eager_frames(compiled: Engine, engine: Engine) -> None:
    for request in reqs(2):
        fast = compiled.render(request).pixels.astype(int)
        slow = engine.render(request).pixels.astype(int)
        # Fused kernels round differently: the same picture to within a level or two.
        assert np.abs(fast - slow).mean() < 0.5 and np.abs(fast - slow).max() <= 8


def test_a_padded_batch_gives_each_request_its_own_frame(compiled: Engine) -> None:
    batch = reqs(3)
    together = compiled.render_batch(batch)
    assert [f.batch_size for f in together] == [3, 3, 3]
    for request, frame in zip(batch, together, strict=True):
        alone = compiled.render(request).pixels.astype(int)
        assert np.abs(frame.pixels.astype(int) - alone).max() <= 2
    assert not np.array_equal(together[0].pixels, together[1].pixels)


def test_engine_benchmark_runs_the_compiled_tiny_arch_against_stock_diffusers(
    cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from promptcast.cli import main

    out, kernels = tmp_path / "bench.json", tmp_path / "profile.md"
    # A second engine in this process compiles its own calls (from the shared cache folder).
    # (config.patch, not monkeypatch: monkeypatch's undo deletes a dynamo config entry.)
    with pytest.raises(SystemExit) as exited, torch._dynamo.config.patch(error_on_recompile=False):
        main(["bench", "--arch", "tiny", "--random-weights", "--device", "cpu", "--resolution",
              str(SIZE), "--steps", "2,1", "--batch", "1,4", "--compile", "compile",
              "--compile-cache", str(cache_dir), "--iterations", "3", "--json", str(out),
              "--profile", str(kernels)])
    assert exited.value.code == 0
    report = json.loads(out.read_text())
    assert (report["arch"], report["mode"], report["resolution"]) == ("tiny", "compile", SIZE)
    assert (report["tuning"], report["jpeg_encoder"]) == ("fast", "cpu")
    # What the warm-up spent compiling, and on what. (Zero where this process compiled the same
    # calls before, for another engine of the same shapes: dynamo reuses that code.)
    assert 0 <= report["compile_backend_s"] <= report["compile_s"] < report["warm_up_s"]
    # The profile of the compiled frames. (On a CPU the profiler sees the operators inductor
    # calls out to, such as the convolutions, but not its own generated C++ kernels.)
    profile = kernels.read_text()
    assert profile.startswith(
        f"tiny {SIZE}x{SIZE}, 2 step(s), batch 1, mode compile, tuning fast, scope whole")
    assert "| category | ms/frame | share |" in profile and "| convolution |" in profile
    assert [(b["batch"], b["steps"]) for b in report["batches"]] == [(1, 2), (1, 1), (4, 2), (4, 1)]
    for b in report["batches"]:
        assert b["fps"] > 0 and b["unet_step_ms"] > 0 and b["stages_ms"]["decode_ms"] > 0
    for b in report["batches"][:2]:  # batch 1, at each step count
        assert b["stock_ms"] > 0 and b["speed_up"] > 0
        assert b["keystroke_ms"] > b["text_miss_ms"] > 0
    printed = capsys.readouterr().out
    assert "| batch | steps | ms/batch | frames/s |" in printed
    assert ("(torch.compile " in printed) == (report["compile_s"] > 0)
    assert printed.count("stock diffusers pipeline") == 2


def test_compile_seconds_tells_tracing_from_the_backend() -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x * 2 + 1).sum()

    before = compile_seconds()
    torch.compile(f, backend="aot_eager", fullgraph=True)(torch.randn(8))
    after = compile_seconds()
    assert before is not None and after is not None
    total, backend = after[0] - before[0], after[1] - before[1]
    assert 0 < backend < total


def test_arch_without_random_weights_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from promptcast.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["bench", "--arch", "sdxl"])
    assert exited.value.code == 2
    assert "--random-weights" in capsys.readouterr().err


def blocks_of(eng: Engine) -> list[torch.nn.Module]:
    """The blocks --compile-scope blocks compiles, in the order the engine's models hold them."""
    from promptcast.engine.compile import REPEATED_BLOCKS

    return [m for m in eng.c.unet.modules() if type(m).__name__ in REPEATED_BLOCKS]


def test_blocks_scope_compiles_each_distinct_block_once_and_never_recompiles(
    engine: Engine, tmp_path: Path,
) -> None:
    from torch._dynamo.utils import counters

    # What the eager engine (the same model) calls its blocks with: the distinct shapes to
    # compile. (One batch size keeps this test short; the whole-scope tests cover batches.)
    seen: set[tuple[object, ...]] = set()

    def record(m: torch.nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        inputs = [*args, *(kwargs[k] for k in sorted(kwargs))]
        seen.add((type(m).__name__, *(tuple(a.shape) if isinstance(a, torch.Tensor) else a
                                       for a in inputs)))

    hooks = [b.register_forward_pre_hook(record, with_kwargs=True) for b in blocks_of(engine)]
    engine.render_batch(reqs(1, text="shapes"))
    for hook in hooks:
        hook.remove()

    eng = Engine(EngineConfig(compile="compile", compile_scope="blocks", sizes=((SIZE, SIZE),),
                              size=(SIZE, SIZE), batch_sizes=(1,), compile_cache=str(tmp_path)))
    with torch._dynamo.config.patch(error_on_recompile=False):  # a new engine compiles
        eng.load()
        before = counters["stats"]["unique_graphs"]
        eng.warm_up()
        graphs = counters["stats"]["unique_graphs"] - before
    assert eng.model_info()["compile_scope"] == "blocks"
    # The text encoder is not compiled in this scope (captured as it is on a GPU).
    assert not eng.prompts.call.compiles and eng.model_info()["compile_fallbacks"] == {}
    # At most a graph per distinct block shape, each reused by every block of that shape, plus
    # one each for the text encoder and the tiny decoder, compiled whole (fewer where an engine
    # before this one in the process compiled the same: dynamo reuses those too). Without that
    # reuse there would be a graph per block.
    assert len(seen) < len(blocks_of(eng))
    assert 0 < graphs <= len(seen) + 2
    with torch._dynamo.config.patch(error_on_recompile=True):
        for request in reqs(2, text="new prompts, new seeds"):
            fast = eng.render(request).pixels.astype(int)
            slow = engine.render(request).pixels.astype(int)
            assert np.abs(fast - slow).mean() < 0.5


def test_sdxl_compiles_with_its_two_text_encoders(hub_cache: Path, tmp_path: Path) -> None:
    # SDXL reads a hidden layer of each text encoder (the penultimate), which transformers
    # records with hooks it sets up on the first call: the compiled path must get past that.
    config = {"preset": "sdxl-turbo", "sizes": ((SIZE, SIZE),), "size": (SIZE, SIZE)}
    eager = Engine(EngineConfig(**config))
    eager.load()
    eng = Engine(EngineConfig(**config, compile="compile", batch_sizes=(1,),
                              compile_cache=str(tmp_path)))
    with torch._dynamo.config.patch(error_on_recompile=False):  # a new engine compiles
        eng.load()
        eng.warm_up()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for request in reqs(2, text="an sdxl prompt"):
            fast = eng.render(request)
            slow = eager.render(request)
            assert not fast.prompt_cache_hit
            assert np.abs(fast.pixels.astype(int) - slow.pixels.astype(int)).mean() < 0.5
