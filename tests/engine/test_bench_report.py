"""`promptcast bench --arch` reports what it measured as it goes: bench/gpu.sh time-boxes every
step, and a step cut off by its limit must still leave its measurements (and say it was cut)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from promptcast.engine import benchmark

ROOT = Path(__file__).resolve().parents[2]


def test_progress_reports_each_measurement_and_the_last_is_complete(tmp_path: Path) -> None:
    snapshots: list[dict[str, object]] = []
    result = benchmark.run("tiny", "cpu", "auto", 64, 1, (1, 2), "eager", 2, stock=False,
                           progress=lambda r: snapshots.append(json.loads(benchmark.to_json(r))))
    # Batch 1 warmed, measured, then its keystroke latency; batch 2 warmed, measured: each
    # bucket's cold start and figures are reported before the next bucket compiles.
    assert [len(s["batches"]) for s in snapshots] == [0, 1, 1, 1, 2]  # type: ignore[arg-type]
    assert not any(s["complete"] for s in snapshots)
    assert snapshots[0]["warm_up_s"] > 0 and snapshots[1]["keystroke_to_frame_ms"] == 0.0  # type: ignore[operator]
    assert snapshots[2]["keystroke_to_frame_ms"] > 0  # type: ignore[operator]
    assert snapshots[4]["warm_up_s"] >= snapshots[0]["warm_up_s"]  # type: ignore[operator]
    assert result.complete and json.loads(benchmark.to_json(result))["complete"] is True
    assert result.host_syncs is None  # counted on CUDA only
    assert snapshots[1]["img2img_ms"] is None and snapshots[2]["img2img_ms"] > 0  # type: ignore[operator]
    assert all(b.video_cpu_ms > 0 and b.video_device_ms > 0 for b in result.batches)

    cut = tmp_path / "sdxl-whole.json"
    # A run where a call fell back (FastCall) says so beside its mode.
    cut.write_text(json.dumps({**snapshots[1], "fallbacks": {"unet step": "could not be captured"}}))
    done = tmp_path / "sd21-fast.json"
    done.write_text(benchmark.to_json(result))
    table = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_summary.py"), str(cut), str(done)],
                           capture_output=True, text=True, check=True).stdout
    assert "| sdxl-whole (cut off) | tiny | 64 |" in table
    assert "| eager/none (eager)/whole (fallback: unet step) |" in table
    assert "| sd21-fast | tiny | 64 |" in table and table.count("\n| sd21-fast |") == 2
    assert f"| {result.img2img_ms:.2f} |" in table  # the img2img column, batch-1 figure
