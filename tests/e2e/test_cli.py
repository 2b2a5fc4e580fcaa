"""`promptcast serve` and `promptcast bench` as a user runs them, in subprocesses."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import ENV, promptcast


def test_serve_renders_and_stops_cleanly_on_sigterm(served: tuple[int, subprocess.Popen[str]]) -> None:
    port, proc = served
    code = (
        "import asyncio, json\n"
        "from websockets.asyncio.client import connect\n"
        "async def main():\n"
        f"    async with connect('ws://127.0.0.1:{port}/ws') as ws:\n"
        "        hello = json.loads(await ws.recv())\n"
        "        await ws.send(json.dumps({'type': 'prompt', 'seq': 1, 'text': 'a red circle'}))\n"
        "        header = json.loads(await ws.recv()); image = await ws.recv()\n"
        "        print(hello['model']['name'], header['seq'], image[:2].hex())\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=True)
    # the embedded model's name, the seq, and the start of a JPEG
    assert out.stdout.strip() == "promptcast-shapes (shapes on plain backgrounds, LCM-distilled) 1 ffd8"
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}/ws") as client:
        assert json.loads(client.recv(10))["type"] == "hello"
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                client.recv(10)
    # A connected client is told the service is restarting (it reconnects, as the page does).
    assert closed.value.rcvd is not None and closed.value.rcvd.code in (1001, 1012)
    # uvicorn shuts down gracefully, then re-raises the signal it caught, so a supervisor
    # sees the process end by SIGTERM as it asked; within the shutdown timeout (10 s).
    assert proc.wait(30) in (0, -signal.SIGTERM)
    assert time.monotonic() - signalled < 12
    log = proc.stdout.read() if proc.stdout else ""
    assert "Application shutdown complete" in log
    assert "Traceback" not in log


def test_serve_with_a_missing_model_says_so_and_exits(tmp_path: Path) -> None:
    proc = promptcast("serve", "--model", str(tmp_path / "nothing-here"),
                      env={**ENV, "HF_HUB_OFFLINE": "1"})
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "promptcast: error:" in out and "nothing-here" in out
    assert "Traceback" not in out


def test_preset_steps_are_checked_before_starting() -> None:
    proc = promptcast("serve", "--preset", "sdxl-lightning", "--steps", "3")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "sdxl-lightning supports [1, 2, 4, 8] steps, not 3" in out


def test_download_of_an_unreachable_model_fails_clearly() -> None:
    # The tests run with HF_HUB_OFFLINE=1 (conftest), as a machine without internet would.
    proc = promptcast("download", "--preset", "lcm", "--model", "nobody/not-there")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "promptcast: error: download failed" in out and "Traceback" not in out


def test_bad_environment_value_is_reported_like_a_bad_flag() -> None:
    proc = promptcast("serve", env={**ENV, "PROMPTCAST_PORT": "eighty"})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--port" in out and "eighty" in out


def test_every_option_has_a_documented_environment_twin() -> None:
    import argparse

    from promptcast.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("serve", "download"):
        for action in commands.choices[name]._actions:
            if action.dest == "help":
                continue
            env = "PROMPTCAST_" + action.dest.upper()
            assert action.help and f"[env: {env}" in action.help, (name, action.dest)
    out = subprocess.run([sys.executable, "-m", "promptcast", "serve", "--help"],
                         capture_output=True, text=True, check=True, env=ENV).stdout
    assert "PROMPTCAST_MAX_SESSIONS" in out


def test_bench_against_a_server_it_starts(tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    proc = promptcast("bench", "--typists", "2", "--cps", "15", "--duration", "3",
                      "--size", "64x64", "--json", str(report_file))
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    report = json.loads(report_file.read_text())
    assert report["typists"] == 2 and report["updates"] >= 80
    assert 0 < report["frames"] <= report["updates"]
    assert report["last_keystroke_shown"] is True
    assert report["keystroke_to_picture_ms"]["p50"] > 0
    assert "keystroke-to-picture ms: p50" in out


def test_osc_is_the_client_bridge_under_the_server_command() -> None:
    # `promptcast osc` hands every argument to promptcast-client's bridge, --help included.
    proc = promptcast("osc", "--help")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "/prompt s" in out and "--listen" in out and "--target" in out
