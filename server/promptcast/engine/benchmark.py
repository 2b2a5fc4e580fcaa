"""`promptcast bench --arch ...`: the engine alone, on a real architecture with random weights.

Random weights have the real model's shapes, so the same FLOPs and the same time per frame,
and nothing needs downloading. The benchmark:

1. builds the architecture (engine/archs.py) on the device;
2. times the stock diffusers pipeline on it, same settings, batch 1, prompt embedding cached,
   at each step count asked for;
3. loads the same components into the engine (fused QKV, compiled, CUDA graphs per bucket
   when asked) and, one batch size at a time (batch 1 first), warms its bucket and times it at
   each step count (one compiled, captured bucket serves every step count, so a second step
   count costs seconds, not a compile): per-stage milliseconds, frames/s; at batch 1 also the
   server-side keystroke-to-frame time of a prompt the cache has never seen, an img2img frame
   and, on CUDA, the host syncs of a frame;
4. prints a table with the speed-up over the stock pipeline, measured in the same run.

The stock pipeline runs first, on the untouched modules: the engine's set-up (QKV fusion,
channels_last) changes them in place.
"""

from __future__ import annotations

import io
import json
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from PIL import Image

from promptcast.config import EngineConfig
from promptcast.core.scheduler import RenderRequest
from promptcast.engine.archs import build_components, stock_pipeline
from promptcast.engine.compile import compile_seconds
from promptcast.engine.image import encode_jpeg
from promptcast.engine.kernel_profile import profile_frames
from promptcast.engine.pipeline import Engine, resolve_device, resolve_dtype
from promptcast.engine.presets import PRESETS
from promptcast.engine.yuv import i420_from_rgb, video_frame

# The preset (sampling recipe) each architecture is benchmarked with, and a guidance override:
# SD 1.5 with LCM sampling at guidance 1 (no classifier-free guidance), like LCM-LoRA.
ARCH_PRESETS: dict[str, tuple[str, float | None]] = {
    "sdxl": ("sdxl-turbo", None),
    "sd21": ("sd-turbo", None),
    "sd15": ("lcm", 1.0),
    "tiny": ("tiny", None),
}


@dataclass
class BatchResult:
    """One batch size at one step count. The batch-1 rows also carry what is measured on a
    lone frame (the targets are batch-1 figures)."""

    batch: int
    steps: int
    frame_ms: float  # median wall time of one batch: render (text cached), and JPEG where the
    # engine encodes (engine_encode_ms), as a WebSocket client gets it
    fps: float  # frames per second at this batch size, render + JPEG encode
    stages_ms: dict[str, float]  # medians of the engine's own stage timings, per batch
    unet_step_ms: float
    encode_ms: float  # JPEG of one frame on the CPU, as the server's worker threads do it
    engine_encode_ms: float | None = None  # JPEG of one frame in the engine (nvJPEG on a GPU)
    # I420 of one frame for a video track: on the CPU (libswscale, as the track's worker thread
    # makes it without the engine's planes) and on the render device (engine/yuv.py)
    video_cpu_ms: float = 0.0
    video_device_ms: float = 0.0
    # Batch 1 only, else None:
    stock_ms: float | None = None  # the stock diffusers pipeline, embedding cached
    keystroke_ms: float | None = None  # a prompt never seen: text encode + render + JPEG
    text_miss_ms: float | None = None  # of that, the text encode (a cache miss)
    # img2img (strength 0.5, prompt cached) with a new init image every frame, decoded beside
    # the engine as the server does it: a creative tool's live canvas
    img2img_ms: float | None = None
    # Calls in one frame (prompt cached) that made the CPU wait for the GPU, as
    # torch.cuda.set_sync_debug_mode counts them; reading the pixels back is one. A frame as a
    # WebSocket client gets it (a JPEG, from the engine where it encodes), and one bound for a
    # video track (its I420 planes, from the engine where it converts). None on a CPU.
    host_syncs: int | None = None
    host_syncs_video: int | None = None
    # Whether the engine's JPEG of a frame shows that frame, not the one rendered before it
    # (what an encoder reading the frame before the device has finished it would show). None
    # where the engine does not encode.
    jpeg_shows_its_frame: bool | None = None

    def speed_up(self) -> float | None:
        return None if self.stock_ms is None else self.stock_ms / self.frame_ms


@dataclass
class BenchResult:
    arch: str
    preset: str
    device: str
    dtype: str
    mode: str
    resolution: int
    steps: list[int]  # the step counts timed, each on every batch size
    load_s: float  # building the random-weight models on the device, and the engine's set-up
    warm_up_s: float
    # Of warm_up_s, torch.compile's time (compile.compile_seconds), and of that its backend's
    # (AOT autograd and inductor); None where torch does not tell. The rest of warm_up_s is
    # capture and first calls.
    compile_s: float | None = None
    compile_backend_s: float | None = None
    tuning: str = "fast"  # --compile-tuning; eager runs have none
    scope: str = "whole"  # --compile-scope
    jpeg_encoder: str = "cpu"  # where frames became JPEGs: "cpu" (worker thread), or the engine's
    # device: "nvjpeg" on a GPU, "engine (cpu)" on a CPU
    batches: list[BatchResult] = field(default_factory=list)  # by batch size, then steps
    # Calls that ran in a lesser mode than `mode` (the compiler or the capture failed): name ->
    # why (Engine.model_info's compile_fallbacks).
    fallbacks: dict[str, str] = field(default_factory=dict)
    complete: bool = False  # False in a progress report: measurements are still to come


def unsupported_steps(arch: str, steps: Sequence[int]) -> str | None:
    """Why `arch` cannot be timed at `steps`, or None if it can."""
    preset = PRESETS[ARCH_PRESETS[arch][0]]
    unsupported = [k for k in steps if k not in preset.steps]
    if not unsupported:
        return None
    return (f"{arch} is sampled with the {preset.name} preset, which takes {list(preset.steps)} "
            f"steps, not {unsupported}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Any, device: torch.device, iterations: int) -> float:
    times = []
    for _ in range(iterations):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@torch.inference_mode()
def time_stock(components: Any, resolution: int, steps: int, guidance: float,
               device: torch.device, iterations: int) -> float:
    """Median ms per frame of the stock pipeline at batch 1, with the prompt embedding given."""
    pipe: Any = stock_pipeline(components)
    pipe.set_progress_bar_config(disable=True)
    kwargs: dict[str, Any] = {}
    if components.arch == "sdxl":
        embeds, _, pooled, _ = pipe.encode_prompt("a photo of a cat", device=device,
                                                  do_classifier_free_guidance=False)
        kwargs["pooled_prompt_embeds"] = pooled
    else:
        embeds, _ = pipe.encode_prompt("a photo of a cat", device, 1, False)

    def frame() -> None:
        pipe(prompt_embeds=embeds, num_inference_steps=steps, guidance_scale=guidance,
             height=resolution, width=resolution, output_type="np", **kwargs)

    frame()  # first-call costs
    return median_ms(frame, device, iterations)


def run(arch: str, device_name: str, dtype_name: str, resolution: int, steps: Sequence[int],
        batches: Sequence[int], compile_mode: str, iterations: int, stock: bool,
        compile_cache: str | None = None, compile_tuning: str = "fast",
        profile_to: str | None = None, jpeg_encode: str = "auto",
        compile_scope: str = "whole",
        progress: Callable[[BenchResult], None] | None = None) -> BenchResult:
    """`steps`: the step counts to time, the first the engine's default (the one profiled).
    `profile_to`: also profile batch-1 frames (kernel_profile.py) and write the report there.
    `progress`: called with the result so far after warm-up and after each measurement, so that
    a run cut off by a time limit (bench/gpu.sh time-boxes every step) leaves what it measured."""
    report = progress or (lambda _result: None)
    if why := unsupported_steps(arch, steps):
        raise ValueError(why)
    preset, guidance = ARCH_PRESETS[arch]
    torch.manual_seed(0)
    device = resolve_device(device_name)
    dtype = resolve_dtype(dtype_name, device)
    config = EngineConfig(
        preset=preset, device=str(device), dtype=dtype_name, steps=steps[0], guidance=guidance,
        sizes=((resolution, resolution),), size=(resolution, resolution),
        batch_sizes=tuple(sorted(set(batches) | {1})), compile=compile_mode,
        compile_cache=compile_cache, compile_tuning=compile_tuning, compile_scope=compile_scope,
        jpeg_encode=jpeg_encode,
    )
    if device.type == "cpu":  # as the engine will: the stock pipeline gets the same threads
        torch.set_num_threads(config.cpu_threads)
    started = time.perf_counter()
    components = build_components(arch, device, dtype)
    build_s = time.perf_counter() - started
    stock_ms: dict[int, float] = {}
    if stock:
        stock_guidance = PRESETS[preset].guidance if guidance is None else guidance
        stock_ms = {k: time_stock(components, resolution, k, stock_guidance, device, iterations)
                    for k in steps}
    engine = Engine(config)
    started = time.perf_counter()
    engine.load(components)
    load_s = build_s + time.perf_counter() - started

    texts = ["a photo of a cat", "a red fox in the snow", "a lighthouse at night", "a bowl of ramen",
             "a city street in the rain", "a mountain lake", "a portrait in oil", "a neon sign"]
    result = BenchResult(
        arch=arch, preset=preset, device=torch.cuda.get_device_name(device) if device.type == "cuda"
        else "cpu", dtype=str(dtype).removeprefix("torch."), mode=engine.mode,
        resolution=resolution, steps=list(steps), load_s=load_s, warm_up_s=0.0,
        tuning=compile_tuning if engine.mode != "eager" else "none (eager)", scope=compile_scope,
        jpeg_encoder=("cpu" if not engine.encodes_jpeg
                      else "nvjpeg" if device.type == "cuda" else "engine (cpu)"),
    )
    # Each bucket is warmed (compiled, captured) just before it is measured, batch 1 first with
    # everything measured on it (the targets are batch-1 figures): a run cut short by its time
    # limit (bench/gpu.sh's) keeps what it measured, its cold start included.
    for b in config.batch_sizes:
        before = compile_seconds()
        engine.warm_up((b,))
        result.warm_up_s += engine.warm_up_seconds
        after = compile_seconds()
        if before is not None and after is not None:
            result.compile_s = (result.compile_s or 0.0) + after[0] - before[0]
            result.compile_backend_s = (result.compile_backend_s or 0.0) + after[1] - before[1]
        result.fallbacks = engine.compile_fallbacks()
        report(result)
        if b not in batches:
            continue
        for k in steps:
            reqs = [RenderRequest(texts[i % len(texts)], i, k, resolution, resolution)
                    for i in range(b)]
            row = _time_batch(engine, reqs, device, iterations)
            result.batches.append(row)
            report(result)
            if b == 1:
                row.stock_ms = stock_ms.get(k)
                _time_alone(engine, row, resolution, device, iterations)
                report(result)
        if b == 1 and profile_to is not None:
            one = RenderRequest(texts[0], 0, steps[0], resolution, resolution)
            kernels = profile_frames(partial(engine.render, one), device,
                                     min(iterations, 10)).report()
            with open(profile_to, "w") as f:
                f.write(f"{arch} {resolution}x{resolution}, {steps[0]} step(s), batch 1, mode "
                        f"{result.mode}, tuning {result.tuning}, scope {result.scope}, "
                        f"{result.device}\n\n{kernels}\n")
    result.complete = True
    return result


def _time_alone(engine: Engine, row: BatchResult, size: int, device: torch.device,
                iterations: int) -> None:
    """The batch-1 figures beside the frame time: a keystroke (a new prompt), an img2img frame
    with a new canvas, and the host syncs of a frame."""
    row.keystroke_ms, row.text_miss_ms = _time_keystroke(engine, row.steps, size, device,
                                                         iterations)
    row.img2img_ms = _time_img2img(engine, row.steps, size, device, iterations)
    req = RenderRequest("a photo of a cat", 0, row.steps, size, size)
    row.host_syncs = count_host_syncs(lambda: engine.render(req, jpeg=True), device)
    row.host_syncs_video = count_host_syncs(lambda: engine.render(req, video=True), device)
    row.jpeg_shows_its_frame = jpeg_shows_its_frame(engine, row.steps, size)


def jpeg_shows_its_frame(engine: Engine, steps: int, size: int) -> bool | None:
    """Whether the JPEG the engine encodes of a frame is closer to that frame's pixels than to
    the frame rendered just before it. None where the engine does not encode JPEGs."""
    if not engine.encodes_jpeg:
        return None
    before = engine.render(RenderRequest("a red fox in the snow", 11, steps, size, size))
    frame = engine.render(RenderRequest("a lighthouse at night", 12, steps, size, size), jpeg=True)
    if frame.jpeg is None or np.array_equal(before.pixels, frame.pixels):
        return frame.jpeg is not None  # two equal frames cannot tell; no JPEG is a failure
    shown = np.asarray(Image.open(io.BytesIO(frame.jpeg)).convert("RGB"), dtype=np.float32)
    own = float(np.abs(shown - frame.pixels).mean())
    other = float(np.abs(shown - before.pixels).mean())
    return own < other


def _time_img2img(engine: Engine, steps: int, size: int, device: torch.device,
                  iterations: int) -> float:
    """Median ms of an img2img frame, batch 1, a new init image (a JPEG) every frame, waiting
    for its decode beside the engine before timing (the server starts it as the image arrives,
    while the GPU renders the frame before)."""
    gx, gy = np.meshgrid(np.linspace(0, 255, size), np.linspace(0, 255, size))
    canvas = np.stack([gx, gy, 255 - gx], -1).astype(np.uint8)
    times = []
    for i in range(iterations + 1):
        canvas[(i * 7) % size, :] = 255  # a stroke more each frame
        req = RenderRequest("a photo of a cat", 1, steps, size, size, encode_jpeg(canvas, 90), 0.5)
        decode = engine.prefetch(req)
        assert decode is not None
        decode.result()
        _sync(device)
        t0 = time.perf_counter()
        engine.render(req)
        if i:  # the first caches the prompt
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _time_keystroke(engine: Engine, steps: int, size: int, device: torch.device,
                    iterations: int) -> tuple[float, float]:
    """A keystroke: a prompt the cache has never seen, rendered alone, then encoded. Medians of
    the whole and of its text encode, in ms."""
    latencies, text_ms = [], []
    for i in range(iterations):
        _sync(device)
        t0 = time.perf_counter()
        frame = engine.render(RenderRequest(f"a keystroke prompt number {i} in {steps} steps", 1,
                                            steps, size, size), jpeg=True)
        if frame.jpeg is None:
            encode_jpeg(frame.pixels, 85)
        latencies.append((time.perf_counter() - t0) * 1e3)
        text_ms.append(frame.timings["text_encode_ms"])
    return statistics.median(latencies), statistics.median(text_ms)


def count_host_syncs(frame: Callable[[], object], device: torch.device) -> int | None:
    """How many times `frame` made the CPU wait for the GPU (synchronizing CUDA calls, as
    torch's sync debug mode sees them: item(), nonzero(), copies from pageable memory, reads
    back). Each one leaves the GPU idle while Python catches up. None on a CPU."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            frame()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # (Not its one-off notice that the mode "does not yet detect all synchronizing operations".)
    return sum("called a synchronizing" in str(w.message) for w in caught)


def _time_batch(engine: Engine, reqs: list[RenderRequest], device: torch.device,
                iterations: int) -> BatchResult:
    every_jpeg = [True] * len(reqs)  # as WebSocket clients get their frames
    engine.render_batch(reqs)  # embeddings into the cache
    stage_runs: list[dict[str, float]] = []

    def batch() -> None:
        stage_runs.append(engine.render_batch(reqs, jpeg=every_jpeg)[0].timings)

    frame_ms = median_ms(batch, device, iterations)
    pixels = engine.render(reqs[0]).pixels
    encode_ms = median_ms(lambda: encode_jpeg(pixels, 85), torch.device("cpu"), iterations)
    stages = {k: statistics.median(r[k] for r in stage_runs) for k in stage_runs[0]}
    b = len(reqs)
    frames = torch.from_numpy(pixels).permute(2, 0, 1)[None].repeat(b, 1, 1, 1).to(device)
    video_cpu_ms = median_ms(lambda: video_frame(pixels, None), torch.device("cpu"), iterations)
    video_device_ms = median_ms(lambda: i420_from_rgb(frames), device, iterations) / b
    in_engine = stages.get("encode_ms")
    return BatchResult(
        batch=b, steps=reqs[0].steps, frame_ms=frame_ms,
        fps=b * 1e3 / (frame_ms if in_engine is not None else frame_ms + b * encode_ms),
        stages_ms=stages, unet_step_ms=stages["denoise_ms"] / reqs[0].steps, encode_ms=encode_ms,
        engine_encode_ms=None if in_engine is None else in_engine / b,
        video_cpu_ms=video_cpu_ms, video_device_ms=video_device_ms,
    )


def _warm_up_split(r: BenchResult) -> str:
    if not r.compile_s or r.compile_backend_s is None:
        return ""
    return (f" (torch.compile {r.compile_s:.1f} s: tracing and guards "
            f"{r.compile_s - r.compile_backend_s:.1f} s, AOT autograd and inductor "
            f"{r.compile_backend_s:.1f} s; capture and first calls "
            f"{max(0.0, r.warm_up_s - r.compile_s):.1f} s)")


def table(r: BenchResult) -> str:
    lines = [
        f"{r.arch} ({r.preset}) {r.resolution}x{r.resolution}, {r.device}, {r.dtype}, mode "
        f"{r.mode}, tuning {r.tuning}, scope {r.scope}: load {r.load_s:.1f} s, warm-up "
        f"(compile/capture) {r.warm_up_s:.1f} s{_warm_up_split(r)}",
        "| batch | steps | ms/batch | frames/s | text ms | UNet ms/step | decode ms | JPEG ms/frame |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in r.batches:
        s = b.stages_ms
        lines.append(
            f"| {b.batch} | {b.steps} | {b.frame_ms:.2f} | {b.fps:.1f} | {s['text_encode_ms']:.2f} "
            f"| {b.unet_step_ms:.2f} | {s['decode_ms']:.2f} | {b.encode_ms:.2f} |"
        )
    for name, why in r.fallbacks.items():
        lines.append(f"FALLBACK: the {name} {why}; it ran in a lesser mode than {r.mode}")
    in_engine = r.batches[0].engine_encode_ms if r.batches else None
    if in_engine is not None:
        lines.append(f"JPEG in the engine ({r.jpeg_encoder}): {in_engine:.2f} ms/frame, counted "
                     "in ms/batch; the JPEG column is the CPU's, for comparison")
    for b in r.batches:
        if b.steps == r.steps[0]:  # the conversion does not depend on the steps
            lines.append(f"I420 for video, batch {b.batch}: {b.video_device_ms:.3f} ms/frame on "
                         f"{r.device} (the engine's), {b.video_cpu_ms:.2f} ms/frame on the CPU "
                         "(libswscale)")
    for b in r.batches:
        if b.keystroke_ms is None or b.text_miss_ms is None:
            continue
        lines.append(f"{b.steps} step(s), batch 1: keystroke to frame (new prompt, with text "
                     f"encode and JPEG) {b.keystroke_ms:.2f} ms, of which text encode "
                     f"{b.text_miss_ms:.2f} ms")
        if b.img2img_ms is not None:
            lines.append(f"  img2img, a new init image each frame (decoded beside the engine): "
                         f"{b.img2img_ms:.2f} ms/frame")
        if b.jpeg_shows_its_frame is False:
            lines.append("  JPEG MISMATCH: the engine's JPEG of a frame does not show that frame")
        if b.host_syncs is not None:
            lines.append(f"  host syncs in a frame (reading it back is one): {b.host_syncs} as a "
                         f"JPEG, {b.host_syncs_video} for a video track")
        speed_up = b.speed_up()
        if b.stock_ms is not None and speed_up is not None:
            lines.append(f"  stock diffusers pipeline, same settings: {b.stock_ms:.2f} ms/frame; "
                         f"promptcast is {speed_up:.2f}x faster")
    return "\n".join(lines)


def to_json(r: BenchResult) -> str:
    report = asdict(r)
    for row, b in zip(report["batches"], r.batches, strict=True):
        row["speed_up"] = b.speed_up()
    return json.dumps(report)
