"""The promptcast-client command: watch and type write frames and print their latency."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest
from promptcast_client import cli

from ..conftest import Server

LINE = re.compile(r"^seq (\d+)\s+([\d.]+) ms\s+\(server [\d.]+ ms\)\s+64x64\s+-> (\S+)", re.M)


async def test_watch_saves_frames_and_prints_latency(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["watch", "a red circle", "--url", server.ws_url, "--out", str(tmp_path), "--frames", "1",
            "--size", "64x64", "--seed", "5"]  # fmt: skip
    assert await asyncio.to_thread(cli.main, argv) == 0
    [(seq, latency, path)] = LINE.findall(capsys.readouterr().out)
    assert float(latency) > 0
    assert Path(path) == tmp_path / f"{int(seq):06d}.jpg"
    assert Path(path).read_bytes()[:3] == b"\xff\xd8\xff"


async def test_type_sends_each_line_and_saves_the_last_lines_frame(server: Server, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "promptcast_client", "type", "--url", server.ws_url, "--out", str(tmp_path),
        "--size", "64x64", "--timeout", "30",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(b"a\na blue\na blue\na blue star\n"), 60)
    assert proc.returncode == 0, err.decode()
    lines = LINE.findall(out.decode())
    assert lines, out.decode()
    # Four lines, one repeated: seqs 1-3 were sent, and the last one's frame is the last printed.
    assert int(lines[-1][0]) == 3 and "'a blue star'" in out.decode().splitlines()[-1]
    assert {Path(p).name for _, _, p in lines} == {p.name for p in tmp_path.iterdir()}


def test_cli_hands_osc_to_the_bridge(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["osc", "--help"])
    assert info.value.code == 0
    assert "/prompt s" in capsys.readouterr().out
