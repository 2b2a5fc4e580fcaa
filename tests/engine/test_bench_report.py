"""`promptcast bench --arch` reports what it measured as it goes: bench/gpu.sh time-boxes every
step, and a step cut off by its limit must still leave its measurements (and say it was cut)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from promptcast.engine import benchmark
from promptcast.engine.pipeline import Engine

ROOT = Path(__file__).resolve().parents[2]


def test_progress_reports_each_measurement_and_the_last_is_complete(tmp_path: Path) -> None:
    snapshots: list[dict[str, Any]] = []
    result = benchmark.run("tiny", "cpu", "auto", 64, (1, 2), (1, 2), "eager", 2, stock=False,
                           progress=lambda r: snapshots.append(json.loads(benchmark.to_json(r))))
    # Batch 1 warmed; each step count measured, then its lone-frame figures (keystroke, img2img);
    # batch 2 warmed, each step count measured: each bucket's cold start and figures are
    # reported before the next bucket compiles.
    assert [len(s["batches"]) for s in snapshots] == [0, 1, 1, 2, 2, 2, 3, 4]
    assert not any(s["complete"] for s in snapshots)
    assert snapshots[0]["warm_up_s"] > 0
    assert snapshots[1]["batches"][0]["keystroke_ms"] is None
    assert snapshots[1]["batches"][0]["img2img_ms"] is None
    assert snapshots[-1]["warm_up_s"] >= snapshots[0]["warm_up_s"]
    assert result.complete and json.loads(benchmark.to_json(result))["complete"] is True
    assert [(b.batch, b.steps) for b in result.batches] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    alone, batched = result.batches[:2], result.batches[2:]
    assert all(b.keystroke_ms and b.text_miss_ms and b.img2img_ms for b in alone)
    assert all(b.keystroke_ms is b.img2img_ms is None for b in batched)
    assert all(b.host_syncs is None for b in result.batches)  # counted on CUDA only
    assert all(b.video_cpu_ms > 0 and b.video_device_ms > 0 for b in result.batches)
    assert all(b.jpeg_shows_its_frame is None for b in result.batches)  # the CPU worker encodes

    cut = tmp_path / "sdxl-whole.json"
    # A run where a call fell back (FastCall) says so beside its mode.
    cut.write_text(json.dumps({**snapshots[1], "fallbacks": {"unet step": "could not be captured"}}))
    done = tmp_path / "sd21-fast.json"
    # Eager: nothing compiled, so no split of the warm-up; a compiled run's is shown beside it.
    assert result.compile_s == 0.0
    done.write_text(json.dumps({**json.loads(benchmark.to_json(result)),
                                "compile_s": 12.5, "compile_backend_s": 8.0}))
    table = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_summary.py"), str(cut), str(done)],
                           capture_output=True, text=True, check=True).stdout
    assert "| sdxl-whole (cut off) | tiny | 64 | 1 |" in table
    assert "| eager/none (eager)/whole (fallback: unet step) |" in table
    rows = [line for line in table.splitlines() if line.startswith("| sd21-fast |")]
    assert [row.split(" | ")[3:6:2] for row in rows] == [["1", "1"], ["2", "1"], ["1", "2"], ["2", "2"]]
    assert f"| {result.batches[1].img2img_ms:.2f} |" in rows[1]  # each step count's img2img
    assert all(f"| {result.warm_up_s:.1f} (4.5 / 8.0) |" in row for row in rows)


def test_a_step_count_the_preset_does_not_take_is_refused_before_building() -> None:
    assert benchmark.unsupported_steps("sd21", (1, 2, 4)) is None
    why = benchmark.unsupported_steps("sdxl", (1, 8))
    assert why is not None and "sdxl-turbo" in why and "[8]" in why
    run = subprocess.run([sys.executable, "-m", "promptcast", "bench", "--arch", "sdxl",
                          "--random-weights", "--steps", "1,8"], capture_output=True, text=True)
    assert run.returncode == 2 and "not [8]" in run.stderr


def test_the_bench_tells_when_the_engines_jpeg_shows_another_frame(
    device_jpeg_engine: Engine, monkeypatch: pytest.MonkeyPatch,
) -> None:
    eng = device_jpeg_engine
    assert benchmark.jpeg_shows_its_frame(eng, 2, 64) is True
    # An encoder that reads the frame buffer before the device has written the new frame
    # encodes the frame before it: made so here by encoding the previous decode's output.
    decoded: list[torch.Tensor] = []
    real_decode, real_jpeg = eng._decode, eng._jpeg
    assert real_jpeg is not None
    monkeypatch.setattr(eng, "_decode", lambda *a: decoded.append(real_decode(*a)) or decoded[-1])
    monkeypatch.setattr(eng, "_jpeg", lambda frames: real_jpeg(decoded[-2][: len(frames)]))
    assert benchmark.jpeg_shows_its_frame(eng, 2, 64) is False
