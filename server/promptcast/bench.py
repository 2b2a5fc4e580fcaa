"""`promptcast bench`: simulated typists against a running server (or one it starts).

Each typist types prompts character by character at a set rate, one prompt update per
keystroke, as the web page does. For every keystroke it measures keystroke-to-picture
latency: the time until a frame arrives that shows that keystroke or a later one. That is
what a person watching the picture feels, including the keystrokes the server coalesced.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from promptcast.options import Options, parse_batch_sizes, parse_size, positive_int

DEFAULT_TEXTS = (
    "a red fox sitting in a snowy forest at dawn",
    "a lighthouse on a cliff above a stormy sea, oil painting",
    "a bowl of ramen with steam rising, studio photo",
    "a small yellow star at the top on a black background",
)


@dataclass
class TypistResult:
    updates: int = 0
    frames: int = 0
    unchanged: int = 0
    refined: int = 0  # refined frames (sent when a typist pauses); not counted in `frames`
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)  # keystroke to picture
    server_ms: list[float] = field(default_factory=list)  # server-side, per frame
    last_seq_shown: bool = False


async def typist(
    url: str, texts: Sequence[str], cps: float, duration: float, size: tuple[int, int] | None,
    steps: int | None,
) -> TypistResult:
    from websockets.asyncio.client import connect

    result = TypistResult()
    # keystroke seq -> (time sent, seq of the frame that shows it)
    waiting: dict[int, tuple[float, int]] = {}
    newest_frame = -1

    def resolve(now: float) -> None:
        for seq in [s for s, (_, need) in waiting.items() if need <= newest_frame]:
            sent, _ = waiting.pop(seq)
            result.latencies_ms.append((now - sent) * 1e3)

    async with connect(url, max_size=None, compression=None) as ws:
        hello = json.loads(await ws.recv())
        if hello.get("type") != "hello":
            raise RuntimeError(f"expected hello, got {hello}")

        async def receive() -> None:
            nonlocal newest_frame
            async for raw in ws:
                if isinstance(raw, bytes):
                    continue  # the image that follows a frame header
                now = time.perf_counter()
                msg = json.loads(raw)
                if msg["type"] == "frame" and msg.get("refined"):
                    result.refined += 1
                elif msg["type"] == "frame":
                    result.frames += 1
                    result.server_ms.append(msg["timings"]["total_ms"])
                    newest_frame = max(newest_frame, msg["seq"])
                elif msg["type"] == "unchanged":
                    result.unchanged += 1
                    if msg["seq"] in waiting:
                        waiting[msg["seq"]] = (waiting[msg["seq"]][0], msg["same_as"])
                elif msg["type"] == "error":
                    result.errors.append(f"{msg['code']}: {msg['message']}")
                    waiting.pop(msg.get("seq", -1), None)
                resolve(now)

        receiver = asyncio.create_task(receive())
        extra: dict[str, Any] = {}
        if size:
            extra["width"], extra["height"] = size
        if steps:
            extra["steps"] = steps
        seq = 0
        start = time.perf_counter()
        for text in itertools.cycle(texts):
            for i in range(1, len(text) + 1):
                due = start + seq / cps
                if due - start >= duration:
                    break
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                seq += 1
                waiting[seq] = (time.perf_counter(), seq)
                await ws.send(json.dumps({"type": "prompt", "seq": seq, "text": text[:i], **extra}))
                extra = {}
                result.updates += 1
            else:
                continue
            break
        # Let the last keystroke's picture arrive; it must, whatever was coalesced before it.
        deadline = time.perf_counter() + 30
        while seq in waiting and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        result.last_seq_shown = seq not in waiting
        receiver.cancel()
    return result


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def run_bench(
    url: str, typists: int, cps: float, duration: float, texts: Sequence[str],
    size: tuple[int, int] | None = None, steps: int | None = None,
) -> dict[str, Any]:
    # Stagger the typists so their keystrokes do not land in lockstep.
    async def staggered(i: int) -> TypistResult:
        await asyncio.sleep(i / (cps * max(1, typists)))
        return await typist(url, (*texts[i % len(texts):], *texts[: i % len(texts)]), cps, duration,
                            size, steps)

    started = time.perf_counter()
    results = await asyncio.gather(*(staggered(i) for i in range(typists)))
    wall = time.perf_counter() - started
    latencies = [v for r in results for v in r.latencies_ms]
    server = [v for r in results for v in r.server_ms]
    updates = sum(r.updates for r in results)
    frames = sum(r.frames for r in results)
    return {
        "typists": typists,
        "chars_per_second": cps,
        "duration_s": round(wall, 2),
        "updates": updates,
        "frames": frames,
        "frames_per_second": round(frames / wall, 2),
        "refined_frames": sum(r.refined for r in results),
        "coalesced_share": round(1 - frames / updates, 3) if updates else 0.0,
        "keystroke_to_picture_ms": {
            "p50": round(percentile(latencies, 50), 1),
            "p95": round(percentile(latencies, 95), 1),
            "p99": round(percentile(latencies, 99), 1),
            "mean": round(statistics.fmean(latencies), 1) if latencies else None,
        },
        "server_prompt_to_frame_ms_p50": round(percentile(server, 50), 1),
        "last_keystroke_shown": all(r.last_seq_shown for r in results),
        "errors": [e for r in results for e in r.errors][:10],
    }


def format_report(report: dict[str, Any]) -> str:
    lat = report["keystroke_to_picture_ms"]
    return "\n".join([
        f"typists {report['typists']} at {report['chars_per_second']} chars/s for "
        f"{report['duration_s']} s",
        f"updates {report['updates']}, frames {report['frames']} "
        f"({report['frames_per_second']} frames/s), coalesced {report['coalesced_share']:.1%}",
        f"keystroke-to-picture ms: p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}",
        f"server prompt-to-frame ms p50: {report['server_prompt_to_frame_ms_p50']}",
        f"last keystroke of every typist shown: {report['last_keystroke_shown']}",
        *(f"error: {e}" for e in report["errors"]),
    ])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def local_server(serve_args: Sequence[str], timeout: float = 300) -> Iterator[str]:
    """Start `promptcast serve` on 127.0.0.1 and yield its /ws URL once it is ready."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "promptcast", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", *serve_args],
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"promptcast serve exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("promptcast serve did not become ready in time")
            time.sleep(0.2)
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench", help="measure keystroke-to-picture latency with simulated typists",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    o = Options(p)
    o.add("--url", "PROMPTCAST_BENCH_URL", None,
          "WebSocket URL of a running server, e.g. ws://127.0.0.1:8000/ws "
          "(default: start a local server with --model/--device)")
    o.add("--typists", "PROMPTCAST_BENCH_TYPISTS", 4, "simulated clients typing at once",
          type=positive_int)
    o.add("--cps", "PROMPTCAST_BENCH_CPS", 10.0, "characters per second each typist types",
          type=float)
    o.add("--duration", "PROMPTCAST_BENCH_DURATION", 20.0, "seconds of typing", type=float)
    o.add("--size", "PROMPTCAST_BENCH_SIZE", None, "image size WxH to ask for", type=parse_size)
    o.add("--steps", "PROMPTCAST_BENCH_STEPS", None, "steps to ask for (with --arch: the step "
          "counts to time, e.g. 1,2; each is timed on the same compiled buckets)", type=step_counts)
    o.add("--model", "PROMPTCAST_BENCH_MODEL", None, "model for the local server")
    o.add("--device", "PROMPTCAST_BENCH_DEVICE", "auto", "device for the local server")
    o.add("--json", "PROMPTCAST_BENCH_JSON", None, "also write the report as JSON to this file "
          "(with --arch, rewritten after each measurement; \"complete\" says whether all ran)")
    p.add_argument("--text", action="append", help="a prompt to type (repeatable)")
    engine = p.add_argument_group(
        "engine benchmark", "with --arch: the engine alone on a real architecture with random "
        "weights (same FLOPs and time as the real model, nothing to download), against the stock "
        "diffusers pipeline in the same run; --steps and --device apply too")
    o = Options(engine)  # type: ignore[arg-type]
    o.add("--arch", "PROMPTCAST_BENCH_ARCH", None, "architecture: sdxl, sd15, sd21 or tiny",
          choices=["sdxl", "sd15", "sd21", "tiny"])
    o.flag("--random-weights", "PROMPTCAST_BENCH_RANDOM_WEIGHTS",
           "build --arch from its public config with random weights (the only source --arch has)")
    o.add("--resolution", "PROMPTCAST_BENCH_RESOLUTION", None,
          "square image size in pixels (default: the architecture's native size)", type=positive_int)
    o.add("--batch", "PROMPTCAST_BENCH_BATCH", (1,), "batch sizes to time, e.g. 1,2,4,8",
          type=parse_batch_sizes)
    o.add("--compile", "PROMPTCAST_BENCH_COMPILE", "auto",
          "engine mode: auto (cuda-graphs on CUDA, eager on CPU), eager, compile, cuda-graphs",
          choices=["auto", "eager", "compile", "cuda-graphs"])
    o.add("--compile-cache", "PROMPTCAST_BENCH_COMPILE_CACHE", None,
          "folder for compiled kernels (default: ~/.cache/promptcast/torch-compile)")
    o.add("--compile-tuning", "PROMPTCAST_BENCH_COMPILE_TUNING", "fast",
          "how hard the compiler tunes: off, fast or max (as promptcast serve)",
          choices=["off", "fast", "max"])
    o.add("--compile-scope", "PROMPTCAST_BENCH_COMPILE_SCOPE", "whole",
          "what the compiler compiles: whole models or their repeated blocks (as promptcast serve)",
          choices=["whole", "blocks"])
    o.add("--dtype", "PROMPTCAST_BENCH_DTYPE", "auto", "auto (float16 on GPU, float32 on CPU), "
          "float32, float16 or bfloat16", choices=["auto", "float32", "float16", "bfloat16"])
    o.add("--iterations", "PROMPTCAST_BENCH_ITERATIONS", 20, "timed repetitions per measurement",
          type=positive_int)
    o.flag("--no-stock", "PROMPTCAST_BENCH_NO_STOCK", "skip the stock diffusers pipeline")
    o.add("--jpeg-encode", "PROMPTCAST_BENCH_JPEG_ENCODE", "auto",
          "who encodes frames: device (the engine: nvJPEG on a GPU), cpu, or auto (as promptcast "
          "serve)", choices=["auto", "device", "cpu"])
    o.add("--profile", "PROMPTCAST_BENCH_PROFILE", None,
          "also profile batch-1 frames and write where the time goes (kernels by category, the "
          "longest kernels) to this file")


def step_counts(text: str) -> tuple[int, ...]:
    """"1,2" -> (1, 2), in the order given (the first is the engine's default, and profiled)."""
    counts = tuple(dict.fromkeys(positive_int(part) for part in text.split(",") if part.strip()))
    if not counts:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of step counts like 1,2")
    return counts


NATIVE_RESOLUTION = {"sdxl": 1024, "sd15": 512, "sd21": 512, "tiny": 128}


def run_engine_bench(args: argparse.Namespace) -> int:
    from promptcast.engine import benchmark

    if not args.random_weights:
        print("--arch needs --random-weights (real weights are benchmarked with a running server: "
              "promptcast bench --url or --model)", file=sys.stderr)
        return 2
    if why := benchmark.unsupported_steps(args.arch, args.steps or (1,)):
        print(f"promptcast bench: error: {why}", file=sys.stderr)
        return 2

    def write(result: benchmark.BenchResult) -> None:
        if args.json:  # after each measurement too: a run cut off by a time limit leaves those
            with open(args.json, "w") as f:
                f.write(benchmark.to_json(result))

    result = benchmark.run(
        args.arch, args.device, args.dtype, args.resolution or NATIVE_RESOLUTION[args.arch],
        args.steps or (1,), args.batch, args.compile, args.iterations, not args.no_stock,
        args.compile_cache, args.compile_tuning, args.profile, args.jpeg_encode, args.compile_scope,
        progress=write,
    )
    print(benchmark.table(result))
    write(result)
    if any(b.jpeg_shows_its_frame is False for b in result.batches):
        print("promptcast bench: error: the engine's JPEGs do not show the frames they were "
              "encoded from", file=sys.stderr)
        return 3
    return 0


def run_from_args(args: argparse.Namespace) -> int:
    if args.arch:
        return run_engine_bench(args)
    if args.steps and len(args.steps) > 1:
        print("promptcast bench: error: typists ask for one step count; several are for --arch",
              file=sys.stderr)
        return 2
    texts = tuple(args.text or DEFAULT_TEXTS)

    def bench(url: str) -> dict[str, Any]:
        return asyncio.run(
            run_bench(url, args.typists, args.cps, args.duration, texts, args.size,
                      args.steps[0] if args.steps else None)
        )

    if args.url:
        report = bench(args.url)
    else:
        serve_args = ["--device", args.device]
        if args.model:
            serve_args += ["--model", args.model]
        if args.size:
            serve_args += ["--size", f"{args.size[0]}x{args.size[1]}"]
        with local_server(serve_args) as url:
            report = bench(url)
    report["machine"] = f"{os.cpu_count()} CPUs, {sys.platform}"
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if report["last_keystroke_shown"] and not report["errors"] else 1
