"""promptcast-client installs with websockets alone: no torch, numpy or Pillow."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[2] / "client" / "python"


def test_the_wheel_requires_websockets_only(tmp_path: Path) -> None:
    # Built from a copy, so the build leaves nothing behind in the working tree.
    src = tmp_path / "src"
    shutil.copytree(CLIENT, src, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*pip_wheel, "-w", str(tmp_path), str(src)], check=True)
    [wheel] = tmp_path.glob("promptcast_client-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        [meta_name] = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(zf.read(meta_name))
        entry_points = next(zf.read(n).decode() for n in zf.namelist() if n.endswith("entry_points.txt"))
    requires = meta.get_all("Requires-Dist") or []
    required = [r for r in requires if "extra ==" not in r]
    assert [r.replace(" ", "") for r in required] == ["websockets>=13"]
    assert any("python-osc" in r and 'extra == "osc"' in r for r in requires)
    assert "promptcast-client = promptcast_client.cli:main" in entry_points


def test_importing_the_client_pulls_in_no_optional_library() -> None:
    code = (
        "import sys, promptcast_client, promptcast_client.cli\n"
        "print(sorted({'torch', 'numpy', 'PIL', 'pythonosc'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
