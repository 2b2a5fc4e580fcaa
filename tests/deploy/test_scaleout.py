"""Scale-out on an existing load balancer: Debian's HAProxy, running the shipped
deploy/haproxy/haproxy.cfg (only its addresses and ports replaced), on 127.0.0.1 in front of two
real CPU workers. The clients are the real page in headless Chromium. nginx's shipped config is
checked with `nginx -t`, and then carries a real WebSocket session too."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from promptcast.bench import free_port

from ..browser.conftest import open_page, type_and_wait
from .conftest import ROOT, TOKEN, Worker, drain, need, start_workers

HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
NGINX_CONF = ROOT / "deploy" / "nginx" / "promptcast.conf"


def templated(path: Path, replacements: dict[str, str], into: Path) -> Path:
    """The shipped file with its listen address and worker addresses replaced, and nothing else:
    each replaced string must appear exactly once, so an edit to the file that moves them breaks
    this test instead of silently testing something else."""
    text = path.read_text()
    for old, new in replacements.items():
        assert text.count(old) == 1, f"{path.name}: expected {old!r} exactly once"
        text = text.replace(old, new)
    into.write_text(text)
    return into


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:  # not listening (yet, or any more)
        return 0, ""


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    ws = start_workers(2)
    yield ws
    for w in ws:
        w.stop()


@pytest.fixture
def haproxy(workers: list[Worker], tmp_path: Path) -> Iterator[int]:
    binary = need("haproxy", "apt-get install haproxy")
    port = free_port()
    cfg = templated(HAPROXY_CFG, {
        "bind :8000": f"bind 127.0.0.1:{port}",
        "127.0.0.1:8001": f"127.0.0.1:{workers[0].port}",
        "127.0.0.1:8002": f"127.0.0.1:{workers[1].port}",
    }, tmp_path / "haproxy.cfg")
    check = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # -db: stay in the foreground, so the fixture owns the process.
    proc = subprocess.Popen([binary, "-db", "-f", str(cfg)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log: list[str] = []
    drain(proc, log)
    try:
        wait_until(lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200 or proc.poll() is not None,
                   20, "haproxy")
        assert proc.poll() is None, "".join(log)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def sessions(w: Worker) -> float:
    return w.metrics()["promptcast_sessions"]


async def test_pages_spread_over_workers_and_fail_over_keeping_their_prompt(
    workers: list[Worker], haproxy: int, browser: Any
) -> None:
    url = f"http://127.0.0.1:{haproxy}/?transport=websocket&token={TOKEN}"
    pages = []
    for text in ("a red circle", "a blue square"):
        page = await open_page(browser, url)
        await type_and_wait(page, text)
        pages.append(page)
    # balance leastconn: the second session goes to the worker that has none.
    assert [sessions(w) for w in workers] == [1, 1]

    seqs = [await p.evaluate("window.promptcast.seq") for p in pages]
    before = workers[1].metrics()
    # SIGTERM, as systemd, Docker and Kubernetes stop a worker: it drains and closes with 1012.
    workers[0].proc.send_signal(signal.SIGTERM)

    # The page that was on the stopped worker reconnects through HAProxy, lands on the other
    # worker, re-sends its prompt as it stands (a new seq) and gets a frame for it. Nobody types.
    deadline = time.monotonic() + 30
    moved: list[int] = []
    while not moved:
        assert time.monotonic() < deadline, "no page got a frame after the failover"
        await asyncio.sleep(0.2)
        for i, p in enumerate(pages):
            state = await p.evaluate("[window.promptcast.seq, window.promptcast.shownSeq]")
            if state[0] > seqs[i] and state[1] >= state[0]:
                moved.append(i)
    assert len(moved) == 1
    page = pages[moved[0]]
    assert await page.input_value("#prompt") == ("a red circle", "a blue square")[moved[0]]
    assert await page.evaluate("document.getElementById('status').dataset.state") == "connected"
    # The other page never noticed.
    other = pages[1 - moved[0]]
    assert await other.evaluate("window.promptcast.seq") == seqs[1 - moved[0]]

    # uvicorn re-raises the signal once it has shut down cleanly.
    assert workers[0].proc.wait(timeout=20) in (0, -signal.SIGTERM), "the stopped worker did not drain"
    after = workers[1].metrics()
    assert after["promptcast_sessions"] == 2
    assert after["promptcast_prompts_received_total"] > before["promptcast_prompts_received_total"]
    assert after["promptcast_frames_sent_total"] > before["promptcast_frames_sent_total"]
    # And the session goes on there.
    final = await type_and_wait(page, "a green star")
    assert await page.evaluate("window.promptcast.shownSeq") == final
    # Every new connection, plain HTTP too (the page itself), goes to the live worker.
    for _ in range(5):
        status, body = await asyncio.to_thread(get, f"http://127.0.0.1:{haproxy}/readyz")
        assert status == 200 and json.loads(body)["status"] == "ready"


def test_nginx_config(tmp_path: Path) -> None:
    nginx = need("nginx", "apt-get install nginx-light")
    main = tmp_path / "nginx.conf"
    main.write_text(nginx_main(tmp_path, NGINX_CONF))
    result = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(main)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def nginx_main(prefix: Path, site: Path) -> str:
    """A minimal nginx.conf that includes the shipped site, as Debian's includes conf.d/*.conf,
    with every file nginx writes kept under the test's folder (it may run as any user)."""
    temp = " ".join(f"{kind}_temp_path {prefix / kind};" for kind in
                    ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # As this user: nginx running as root would switch its workers to nobody, who is not mapped
    # in the test's user namespace.
    user = f"{pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name}"
    return (f"user {user};\npid {prefix / 'nginx.pid'};\nerror_log stderr;\nevents {{}}\n"
            f"http {{ access_log off; {temp} include {site}; }}\n")


async def test_nginx_carries_a_websocket_session(workers: list[Worker], tmp_path: Path) -> None:
    nginx = need("nginx", "apt-get install nginx-light")
    port = free_port()
    site = templated(NGINX_CONF, {
        "listen 8000;": f"listen 127.0.0.1:{port};",
        "127.0.0.1:8001": f"127.0.0.1:{workers[0].port}",
        "127.0.0.1:8002": f"127.0.0.1:{workers[1].port}",
    }, tmp_path / "promptcast.conf")
    main = tmp_path / "nginx.conf"
    main.write_text(nginx_main(tmp_path, site))
    proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(main), "-g", "daemon off;"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        await asyncio.to_thread(wait_until, lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200,
                                20, "nginx")
        uri = f"ws://127.0.0.1:{port}/ws"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        clients = [await websockets.connect(uri, additional_headers=auth) for _ in range(2)]
        try:
            for c in clients:
                assert json.loads(await c.recv())["type"] == "hello"
            # least_conn: one session each.
            assert [sessions(w) for w in workers] == [1, 1]
            await clients[0].send(json.dumps({"type": "prompt", "seq": 1, "text": "a red circle"}))
            header = json.loads(await asyncio.wait_for(clients[0].recv(), 30))
            assert header["type"] == "frame" and header["seq"] == 1
            assert (await clients[0].recv())[:2] == b"\xff\xd8"  # a JPEG, through nginx
        finally:
            for c in clients:
                await c.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
