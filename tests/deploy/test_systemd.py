"""deploy/systemd/promptcast.service: what it promises (restart, unprivileged, graceful stop within
the server's shutdown timeout, options from an environment file), checked by parsing it, and by
`systemd-analyze verify` where systemd is installed. env.example names only real options."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import need

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "deploy" / "systemd"
UNIT = HERE / "promptcast.service"
ENV_EXAMPLE = HERE / "env.example"


def unit() -> configparser.ConfigParser:
    # systemd repeats keys (Environment=); strict=False keeps the last, so those are read apart.
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def environment() -> dict[str, str]:
    pairs = re.findall(r"^Environment=(\w+)=(.*)$", UNIT.read_text(), re.MULTILINE)
    return dict(pairs)


def test_restarts_always_as_an_unprivileged_user_with_options_from_a_file() -> None:
    service = unit()["Service"]
    assert service["Restart"] == "always"
    assert service["RestartPreventExitStatus"] == "2"  # the CLI's exit code for a bad configuration
    assert service["User"] not in ("", "root") and service["Group"] not in ("", "root")
    assert service["NoNewPrivileges"] == "yes"
    assert service["EnvironmentFile"] == "/etc/promptcast/env"
    assert service["ExecStart"].endswith("/bin/promptcast serve")
    assert unit()["Unit"]["StartLimitIntervalSec"] == "0"  # never gives up restarting
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_stops_with_sigterm_and_waits_a_little_longer_than_the_server_does() -> None:
    from promptcast.config import Config

    service = unit()["Service"]
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"  # SIGTERM to the server alone, SIGKILL to all at the end
    shutdown = float(environment()["PROMPTCAST_SHUTDOWN_TIMEOUT"])
    assert shutdown == Config().shutdown_timeout_s
    stop = float(service["TimeoutStopSec"])
    # Long enough for the graceful shutdown to finish, short enough that a hung one is killed.
    assert shutdown < stop <= shutdown + 10


def test_caches_persist_where_the_service_may_write() -> None:
    service = unit()["Service"]
    env = environment()
    assert service["ProtectSystem"] == "strict"  # so only these are writable
    assert env["XDG_CACHE_HOME"] == f"/var/cache/{service['CacheDirectory']}"
    assert env["HF_HOME"].startswith(env["XDG_CACHE_HOME"] + "/")
    assert env["HOME"] == f"/var/lib/{service['StateDirectory']}"


def test_env_example_names_only_real_options() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "promptcast", "serve", "--help"], capture_output=True, text=True,
        check=True, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    ).stdout
    names = re.findall(r"^#?(PROMPTCAST_\w+)=", ENV_EXAMPLE.read_text(), re.MULTILINE)
    assert "PROMPTCAST_TOKEN" in names and "PROMPTCAST_MAX_MJPEG_VIEWERS" in names
    for name in names + list(k for k in environment() if k.startswith("PROMPTCAST_")):
        assert name in help_text, name


def test_systemd_analyze_verify_finds_nothing_wrong(tmp_path: Path) -> None:
    analyze = need("systemd-analyze", "apt-get install systemd")
    # verify also checks that ExecStart exists: point it at this checkout's promptcast.
    exe = Path(sys.executable).with_name("promptcast")
    if not exe.exists():
        pytest.skip(f"{exe} is not installed")
    copy = tmp_path / "promptcast.service"
    copy.write_text(UNIT.read_text().replace("/opt/promptcast/.venv/bin/promptcast", str(exe)))
    out = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr  # unknown keys and bad values only warn
