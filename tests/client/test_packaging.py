"""promptcast-client installs with websockets alone: no torch, numpy or Pillow."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[2] / "client" / "python"


def required(requires: list[str]) -> list[str]:
    return [r.replace(" ", "") for r in requires if "extra ==" not in r]


def test_the_installed_distribution_requires_websockets_only() -> None:
    # The metadata pip built when it installed client/python (editable or not).
    requires = metadata.requires("promptcast-client") or []
    assert required(requires) == ["websockets>=13"]
    assert any(r.startswith("python-osc") and 'extra == "osc"' in r for r in requires)
    [script] = [e for e in metadata.entry_points(group="console_scripts") if e.name == "promptcast-client"]
    assert script.value == "promptcast_client.cli:main"


def test_a_freshly_built_wheel_requires_websockets_only(tmp_path: Path) -> None:
    # --no-build-isolation: the tests run without network, so the build uses this setuptools.
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools installed")
    src = tmp_path / "src"  # built from a copy, so the build leaves nothing in the working tree
    shutil.copytree(CLIENT, src, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*pip_wheel, "-w", str(tmp_path), str(src)], check=True)
    [wheel] = tmp_path.glob("promptcast_client-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        [meta_name] = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(zf.read(meta_name))
        assert "promptcast_client/py.typed" in zf.namelist()
    assert required(meta.get_all("Requires-Dist") or []) == ["websockets>=13"]


def test_importing_the_client_pulls_in_no_optional_library() -> None:
    code = (
        "import sys, promptcast_client, promptcast_client.cli\n"
        "print(sorted({'torch', 'numpy', 'PIL', 'pythonosc'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
