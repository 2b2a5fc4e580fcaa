"""The README's two Quick start commands are what users run; CI must run the second verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section)


def test_quick_start_has_exactly_two_commands() -> None:
    serve, test = quick_start_commands()
    assert "promptcast serve" in serve
    assert "pytest" in test


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    _, test = quick_start_commands()
    ci_lines = (ROOT / ".ci/run").read_text().splitlines()
    assert test in ci_lines
