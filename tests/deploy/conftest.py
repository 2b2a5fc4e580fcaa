"""Helpers for the deployment tests: the shipped recipes, real `promptcast serve` workers on
127.0.0.1, and the Debian tools (haproxy, nginx, promtool) and hadolint that check them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from promptcast.bench import free_port

# The page's tests' Chromium fixture, for the scale-out test's clients.
from ..browser.conftest import browser  # noqa: F401
from ..e2e.conftest import ENV, promptcast, wait_ready

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "deploy-test_token.1"


def need(tool: str, install: str) -> str:
    """The tool's path. Missing: skip here, fail in CI (as tests/browser/conftest.py does for
    chromium), so that CI cannot pass without running these checks."""
    found = shutil.which(tool) or shutil.which(tool, path=str(Path(sys.executable).parent))
    if found is None:
        for folder in ("/usr/sbin", "/usr/bin"):  # not on PATH for every user
            if Path(folder, tool).exists():
                found = str(Path(folder, tool))
    if found is None:
        reason = f"{tool} is not installed ({install})"
        if os.environ.get("CI"):
            raise RuntimeError(f"CI must run the deployment checks: {reason}")
        pytest.skip(reason)
    return found


def drain(proc: subprocess.Popen[str], into: list[str]) -> None:
    """Keep reading a child's output: a full pipe would block its logging, and with it the server."""
    assert proc.stdout is not None
    stream = proc.stdout

    def pump() -> None:
        for line in stream:
            into.append(line)

    threading.Thread(target=pump, daemon=True).start()


class Worker:
    def __init__(self, **env: str) -> None:
        self.port = free_port()
        self.log: list[str] = []
        self.proc = promptcast("serve", env={
            **ENV, "PROMPTCAST_PORT": str(self.port), "PROMPTCAST_TOKEN": TOKEN,
            # Refines would only add CPU load on 2 shared cores; the short shutdown keeps the
            # failover test quick.
            "PROMPTCAST_REFINE_AFTER_MS": "0", "PROMPTCAST_SHUTDOWN_TIMEOUT": "4", **env,
        })

    def ready(self) -> None:
        wait_ready(self.port, self.proc)
        drain(self.proc, self.log)

    def metrics(self) -> dict[str, float]:
        """The worker's /metrics as {sample name with labels: value}."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_workers(n: int) -> list[Worker]:
    workers = [Worker() for _ in range(n)]
    try:
        for w in workers:  # they load in parallel; waiting in turn costs nothing more
            w.ready()
    except BaseException:
        for w in workers:
            w.stop()
        raise
    return workers


@pytest.fixture(scope="package")
def worker() -> Iterator[Worker]:
    """One running worker, shared by the tests that only read from it."""
    (w,) = start_workers(1)
    yield w
    w.stop()
