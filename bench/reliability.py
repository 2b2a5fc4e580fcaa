"""Load, fairness, churn and fault-injection figures for docs/reliability.md.

The server runs in its own process, on 127.0.0.1, with the fixed-time fake engine
(bench/fake_engine.py): these figures are about the loop, the scheduler and the transports.

    .venv/bin/python bench/reliability.py load --clients 200 --hz 20 --seconds 30
    .venv/bin/python bench/reliability.py fairness --clients 50 --step-ms 10
    scripts/pytest-loopback .venv/bin/python bench/reliability.py churn --cycles 1000
    .venv/bin/python bench/reliability.py faults --faults 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from promptcast.bench import DEFAULT_TEXTS, free_port, percentile, run_bench, typist

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------ the server under test


def serve_fake(port: int, step_ms: float, max_batch: int) -> None:
    """Runs in the child process: the real app and uvicorn, the fake engine."""
    import uvicorn

    sys.path.insert(0, str(HERE))
    from fake_engine import FixedTimeEngine
    from promptcast.app import create_app
    from promptcast.cli import uvicorn_config
    from promptcast.config import Config
    from promptcast.runtime.logs import limit_rates

    # Every client comes from 127.0.0.1 here, so the per-address cap is lifted to the total;
    # the fault bench sends as fast as answers come back, over the default message rate.
    config = Config(host="127.0.0.1", port=port, log_level="warning", refine_after_ms=0,
                    max_sessions=1024, max_sessions_per_ip=1024, max_messages_per_s=1000,
                    max_webrtc_peers=1024, ice_hosts=("127.0.0.1",))
    app = create_app(config, FixedTimeEngine(step_ms, max_batch))  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn_config(app, config))
    limit_rates()  # the log set-up `promptcast serve` makes
    server.run()


@contextlib.contextmanager
def fake_server(step_ms: float, max_batch: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "_serve", str(port), str(step_ms), str(max_batch)])
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(base + "/readyz", timeout=1).status == 200:
                    break
            time.sleep(0.1)
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(15)


def rss_mb(proc: subprocess.Popen[bytes]) -> float:
    status = Path(f"/proc/{proc.pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else float("nan")


def udp_sockets(proc: subprocess.Popen[bytes]) -> int:
    """UDP sockets the server process holds: each ICE connection binds some, so sockets left
    after every peer has gone are leaked peers."""
    inodes = set()
    for fd in Path(f"/proc/{proc.pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    udp = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                udp += line.split()[9] in inodes
    return udp


def metric(base: str, name: str) -> float:
    text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)", text, re.M)
    return float(match.group(1)) if match else float("nan")


# ------------------------------------------------------------ load


async def poll_health(base: str, stop: asyncio.Event, out: list[float]) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.to_thread(lambda: urllib.request.urlopen(base + "/healthz", timeout=10).read())
        out.append((time.perf_counter() - t0) * 1e3)
        await asyncio.sleep(0.1)


async def load(args: argparse.Namespace) -> dict[str, Any]:
    with fake_server(args.step_ms, args.max_batch) as (base, proc):
        url = base.replace("http", "ws") + "/ws"
        health: list[float] = []
        stop = asyncio.Event()
        poller = asyncio.create_task(poll_health(base, stop, health))
        report = await run_bench(url, args.clients, args.hz, args.seconds, DEFAULT_TEXTS)
        stop.set()
        await poller
        report["healthz_ms"] = {"p50": round(percentile(health, 50), 1),
                                "p99": round(percentile(health, 99), 1), "samples": len(health)}
        report["server_rss_mb"] = round(rss_mb(proc), 1)
        ready = json.loads(urllib.request.urlopen(base + "/readyz", timeout=5).read())
        report["engine_idle_between_batches_ms"] = ready["model"]["idle_between_batches_ms"]
        delay_s = metric(base, "promptcast_engine_start_delay_seconds_sum")
        batches = metric(base, "promptcast_engine_start_delay_seconds_count")
        report["engine_start_delay_mean_ms"] = round(delay_s / batches * 1e3, 3) if batches else None
        return report


# ------------------------------------------------------------ fairness


async def fairness(args: argparse.Namespace) -> dict[str, Any]:
    with fake_server(args.step_ms, args.max_batch) as (base, _):
        url = base.replace("http", "ws") + "/ws"

        async def one(i: int) -> Any:
            await asyncio.sleep(i / (args.hz * args.clients))
            return await typist(url, DEFAULT_TEXTS, args.hz, args.seconds, None, None)

        results = await asyncio.gather(*(one(i) for i in range(args.clients)))
    frames = [r.frames for r in results]
    total = sum(frames)
    return {
        "clients": args.clients, "step_ms": args.step_ms, "max_batch": args.max_batch,
        "frames_total": total,
        "share_per_client_percent": {
            "ideal": round(100 / args.clients, 2),
            "min": round(100 * min(frames) / total, 2), "max": round(100 * max(frames) / total, 2),
            "stdev": round(100 * statistics.pstdev(frames) / total, 2),
        },
        "frames_per_client": {"min": min(frames), "max": max(frames)},
        "last_keystroke_shown": all(r.last_seq_shown for r in results),
    }


# ------------------------------------------------------------ churn


async def churn_cycle(url: str, i: int, webrtc: bool) -> bool:
    """Connect, prompt, wait for the frame (or, with `webrtc`, for the video peer to connect),
    leave: politely (close) or abruptly (TCP reset). Returns whether the frame or peer came."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    ws = await connect(url, max_size=None)
    await ws.recv()  # hello
    pc = None
    if webrtc:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        await ws.send(json.dumps({"type": "webrtc_offer", "sdp": pc.localDescription.sdp}))
    await ws.send(json.dumps({"type": "prompt", "seq": 1, "text": f"churn {i}"}))
    got = False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            while not got:
                raw = await ws.recv()
                if not webrtc:
                    got = isinstance(raw, bytes)
                    continue
                msg = json.loads(raw) if isinstance(raw, str) else {}
                if msg.get("type") == "webrtc_answer" and pc is not None:
                    await pc.setRemoteDescription(RTCSessionDescription(msg["sdp"], "answer"))
                got = msg == {"type": "video", "transport": "webrtc", "reason": ""}
    if pc is not None:
        await pc.close()
    if i % 2:
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.transport.abort()  # RST, no close handshake
    else:
        await ws.close()
    return got


async def churn(args: argparse.Namespace) -> dict[str, Any]:
    with fake_server(args.step_ms, args.max_batch) as (base, proc):
        url = base.replace("http", "ws") + "/ws"
        # Only this process and the server live in the loopback-only netns, so the client
        # offers 127.0.0.1 too (as the server does, from its config).
        from promptcast.transport.webrtc import use_ice_host_addresses

        use_ice_host_addresses(["127.0.0.1"])
        webrtc_every = args.webrtc_every
        for i in range(20):  # warm: imports, first allocations
            await churn_cycle(url, i, webrtc_every > 0 and i % webrtc_every < 2)
        rss_before, udp_before = rss_mb(proc), udp_sockets(proc)
        sem = asyncio.Semaphore(20)

        async def limited(i: int) -> bool:
            async with sem:
                return await churn_cycle(url, i, webrtc_every > 0 and i % webrtc_every < 2)

        peak_udp = 0

        async def sample_udp() -> None:  # shows the count is live, not always 0
            nonlocal peak_udp
            while True:
                peak_udp = max(peak_udp, udp_sockets(proc))
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample_udp())
        got = await asyncio.gather(*(limited(i) for i in range(args.cycles)))
        sampler.cancel()
        await asyncio.sleep(5)  # the server notices the resets; closed peers release their ports
        with_video = sum(webrtc_every > 0 and i % webrtc_every < 2 for i in range(args.cycles))
        return {
            "cycles": args.cycles, "abrupt_resets": args.cycles // 2,
            "cycles_with_webrtc": with_video,
            "frames_or_peers_received": sum(got),
            "sessions_left": metric(base, "promptcast_sessions"),
            "webrtc_peers_left": metric(base, "promptcast_webrtc_peers"),
            "server_udp_sockets_before_peak_after": [udp_before, peak_udp, udp_sockets(proc)],
            "jobs_pending_left": metric(base, "promptcast_jobs_pending"),
            "rss_mb_before": round(rss_before, 1), "rss_mb_after": round(rss_mb(proc), 1),
        }


# ------------------------------------------------------------ faults


async def faults(args: argparse.Namespace) -> dict[str, Any]:
    with fake_server(args.step_ms, args.max_batch) as (base, proc):
        url = base.replace("http", "ws") + "/ws"
        errors = recovered = 0
        async with connect(url, max_size=None) as ws, connect(url, max_size=None) as bystander:
            await ws.recv()
            await bystander.recv()
            rss_before = rss_mb(proc)
            seq = 0
            bystander_frames = 0
            for i in range(args.faults):
                seq += 1
                await ws.send(json.dumps({"type": "prompt", "seq": seq, "text": f"fault {i}"}))
                await bystander.send(json.dumps({"type": "prompt", "seq": i + 1, "text": f"calm {i}"}))
                msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                errors += msg["type"] == "error" and msg["code"] == "engine_error" and msg["seq"] == seq
                seq += 1
                await ws.send(json.dumps({"type": "prompt", "seq": seq, "text": f"fine {i}"}))
                msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if msg["type"] == "frame" and msg["seq"] == seq:
                    await ws.recv()
                    recovered += 1
                while True:  # the bystander's frame for this round
                    raw = await asyncio.wait_for(bystander.recv(), 10)
                    if isinstance(raw, bytes):
                        bystander_frames += 1
                        break
            return {
                "faults_injected": args.faults, "errors_with_seq": errors,
                "next_frame_rendered": recovered, "bystander_frames": bystander_frames,
                "engine_errors_metric": metric(base, "promptcast_engine_errors_total"),
                "rss_mb_before": round(rss_before, 1), "rss_mb_after": round(rss_mb(proc), 1),
            }


def main() -> None:
    if sys.argv[1:2] == ["_serve"]:
        serve_fake(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["load", "fairness", "churn", "faults"])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--hz", type=float, default=20.0, help="prompt updates per client per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--step-ms", type=float, default=5.0, help="the fake engine's time per batch")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--faults", type=int, default=100)
    parser.add_argument("--webrtc-every", type=int, default=4,
                        help="churn: 2 of every N cycles negotiate WebRTC video (0: none); run it in "
                        "a loopback-only netns: scripts/pytest-loopback .venv/bin/python ...")
    args = parser.parse_args()
    run = {"load": load, "fairness": fairness, "churn": churn, "faults": faults}[args.what]
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
