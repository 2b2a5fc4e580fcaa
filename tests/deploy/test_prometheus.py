"""The documented Prometheus setup: every metric the recording rules read exists in a real
worker's /metrics (with the labels they aggregate by), and promtool checks the config and rules
and runs them on two synthetic workers to show that they add the workers up."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path

import pytest
import websockets
import yaml

from .conftest import ROOT, TOKEN, Worker, need

PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULES = ROOT / "deploy" / "prometheus" / "promptcast-rules.yml"


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


async def render_one_frame(port: int) -> None:
    """So that the histograms with labels (per stage) have samples to show."""
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws",
                                  additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        await ws.send(json.dumps({"type": "prompt", "seq": 1, "text": "a red circle"}))
        while True:
            message = await asyncio.wait_for(ws.recv(), 30)
            if isinstance(message, str) and json.loads(message)["type"] == "frame":
                await ws.recv()
                return


async def test_the_rules_read_metrics_a_real_worker_exports(worker: Worker) -> None:
    await render_one_frame(worker.port)
    samples = await asyncio.to_thread(worker.metrics)
    labels = {}
    for sample in samples:
        name, _, rest = sample.partition("{")
        labels.setdefault(name, set()).update(re.findall(r"(\w+)=", rest))
    used = set()
    for expr in rule_exprs():
        # Recorded series (with a colon) and Prometheus' own `up` are not the worker's.
        used |= {n for n in re.findall(r"\bpromptcast_\w+(?::\w+)?", expr) if ":" not in n}
        for grouping, metric in re.findall(r"by \(([\w, ]+)\) \(rate\((promptcast_\w+)\[", expr):
            wanted = {g.strip() for g in grouping.split(",")} - {"job", "instance"}
            assert wanted <= labels.get(metric, set()), f"{metric} has no labels {wanted}"
    assert used, "no metric names found in the rules"
    missing = sorted(name for name in used if name not in labels)
    assert not missing, f"the rules read metrics no worker exports: {missing}"
    assert {"promptcast_frames_sent_total", "promptcast_sessions",
            "promptcast_keystroke_to_frame_seconds_bucket"} <= used


def test_the_scrape_config_scrapes_each_worker() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["rule_files"] == [RULES.name]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "promptcast" and job.get("metrics_path", "/metrics") == "/metrics"
    assert len(job["static_configs"][0]["targets"]) >= 2


def k8s_variant(into: Path) -> Path:
    """prometheus.yml with its commented-out Kubernetes pod-discovery job switched on."""
    lines = PROMETHEUS.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "job_name: promptcast-pods" in line)
    block = []
    for line in lines[start:]:
        if not line.startswith("  #"):
            break
        block.append(line.replace("  # ", "  ", 1))
    text = "\n".join([*lines[:start], *block]).replace(
        "rule_files:\n  - promptcast-rules.yml", f"rule_files:\n  - {RULES}")
    into.write_text(text + "\n")
    return into


def test_promtool_checks_config_and_rules() -> None:
    promtool = need("promtool", "apt-get install prometheus")
    for args in (["check", "config", str(PROMETHEUS)], ["check", "rules", str(RULES)]):
        result = subprocess.run([promtool, *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_the_kubernetes_variant(tmp_path: Path) -> None:
    promtool = need("promtool", "apt-get install prometheus")
    variant = k8s_variant(tmp_path / "k8s.yml")
    job = yaml.safe_load(variant.read_text())["scrape_configs"][1]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    result = subprocess.run([promtool, "check", "config", str(variant)], capture_output=True, text=True)
    if "field kubernetes_sd_configs not found" in result.stdout + result.stderr:
        # Not a fault of the file: Debian builds Prometheus without Kubernetes discovery.
        pytest.skip("this promtool was built without Kubernetes service discovery (Debian's is)")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_add_up_two_workers(tmp_path: Path) -> None:
    """Worker a sends 10 frames/s, all within 50 ms; worker b 1 frame/s, within 300-500 ms.
    Fleet-wide: 11 frames/s, 8 sessions, and a p99 from the summed buckets (0.478 s: the 10.89th
    of 11 frames/s lies in b's bucket), which no average of the per-worker p99s gives."""
    promtool = need("promtool", "apt-get install prometheus")

    def series(name: str, instance: str, values: str, **extra: str) -> dict[str, str]:
        labels = ",".join(f'{k}="{v}"' for k, v in {"job": "promptcast", "instance": instance,
                                                   **extra}.items())
        return {"series": f"{name}{{{labels}}}", "values": values}

    # 15 s apart: +150 per step is 10/s.
    per_s = {"a": {"0.05": 10, "0.3": 10, "0.5": 10, "+Inf": 10},
             "b": {"0.05": 0, "0.3": 0, "0.5": 1, "+Inf": 1}}
    inputs = [series("promptcast_frames_sent_total", "a", "0+150x20"),
              series("promptcast_frames_sent_total", "b", "0+15x20"),
              series("promptcast_sessions", "a", "3x20"),
              series("promptcast_sessions", "b", "5x20")]
    for instance, buckets in per_s.items():
        for le, rate in buckets.items():
            inputs.append(series("promptcast_keystroke_to_frame_seconds_bucket", instance,
                                 f"0+{rate * 15}x20", le=le))

    def expect(record: str, value: float) -> dict[str, object]:
        return {"expr": record, "eval_time": "4m",
                "exp_samples": [{"labels": f'{record}{{job="promptcast"}}', "value": value}]}

    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            "input_series": inputs,
            "promql_expr_test": [
                expect("job:promptcast_frames_sent:rate1m", 11),
                expect("job:promptcast_sessions:sum", 8),
                expect("job:promptcast_sessions:max", 5),
                # In ms, rounded: the interpolation is not exact in binary floating point.
                {"expr": "round(1000 * job:promptcast_keystroke_to_frame_seconds:p99_1m)",
                 "eval_time": "4m", "exp_samples": [{"labels": '{job="promptcast"}', "value": 478}]},
            ],
        }],
    }
    path = tmp_path / "rules-test.yml"
    path.write_text(yaml.safe_dump(test))
    result = subprocess.run([promtool, "test", "rules", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", [PROMETHEUS, RULES], ids=lambda p: p.name)
def test_yaml_parses(path: Path) -> None:
    assert yaml.safe_load(path.read_text())
