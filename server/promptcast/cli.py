"""`promptcast serve | bench`. Every option has an environment-variable twin."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from promptcast import __version__
from promptcast.config import Config, EngineConfig
from promptcast.core.access import is_loopback
from promptcast.engine.model_index import ModelLoadError, read_model_index
from promptcast.engine.presets import PRESETS, fetch_hint
from promptcast.options import (
    Options,
    non_negative_float,
    parse_batch_sizes,
    parse_size,
    parse_sizes,
    port_number,
    positive_int,
)

log = logging.getLogger("promptcast")

# Messages larger than this (or than an image may be) are refused by the WebSocket layer itself
# with close code 1009: past the protocol's own limits (answered with an error), this is abuse.
TRANSPORT_MAX_BYTES = 1 << 20


def _model_options(o: Options) -> None:
    """What to load: shared by `serve` and `download`."""
    o.add("--preset", "PROMPTCAST_PRESET", None,
          "model family with its model-card settings: "
          + "; ".join(f"{p.name}: {p.summary}" for p in PRESETS.values())
          + " (default: tiny, or inferred from --model)", choices=list(PRESETS), metavar="NAME")
    o.add("--model", "PROMPTCAST_MODEL", None,
          "diffusers-format Stable Diffusion / SDXL folder or Hugging Face hub id, replacing the "
          "preset's base model (default: the preset's; for no preset the embedded tiny model)")
    o.add("--steps", "PROMPTCAST_STEPS", None,
          "default denoising steps; for sdxl-lightning, which checkpoint (1, 2, 4 or 8) "
          "(default: the preset's)", type=positive_int)
    o.flag("--lora", "PROMPTCAST_LORA",
           "sdxl-lightning: fuse the Lightning LoRA into SDXL base instead of loading its UNet")
    o.add("--vae", "PROMPTCAST_VAE", None,
          "decoder folder or hub id (tiny or full autoencoder) replacing the preset's")
    o.flag("--full-vae", "PROMPTCAST_FULL_VAE",
           "decode with the model's full autoencoder instead of the tiny one (slower)")


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve", help="run the server",
        description="Serve prompt-as-you-type image generation over WebSocket at /ws.",
    )
    o = Options(p)
    o.add("--host", "PROMPTCAST_HOST", "127.0.0.1", "address to listen on")
    o.add("--port", "PROMPTCAST_PORT", 8000, "port to listen on", type=port_number)
    _model_options(o)
    o.add("--device", "PROMPTCAST_DEVICE", "auto", "where the model runs: auto, cpu, cuda or cuda:N")
    o.add("--dtype", "PROMPTCAST_DTYPE", "auto", "weights dtype (auto: float16 on GPU, float32 on CPU)",
          choices=["auto", "float32", "float16", "bfloat16"])
    o.add("--guidance", "PROMPTCAST_GUIDANCE", None,
          "guidance scale (default: the preset's; above 1 runs classifier-free guidance unless "
          "the model embeds the scale, as LCM checkpoints do)", type=float)
    o.add("--max-steps", "PROMPTCAST_MAX_STEPS", None,
          "most steps a client may ask for (default: 8 for LCM, 4 for turbo)", type=positive_int)
    o.add("--size", "PROMPTCAST_SIZE", None, "default image size WxH (default: the model's native size)",
          type=parse_size)
    o.add("--sizes", "PROMPTCAST_SIZES", (),
          "comma-separated sizes clients may ask for, e.g. 256x256,512x512 "
          "(default: half, once and twice the native size)", type=parse_sizes)
    o.add("--batch-sizes", "PROMPTCAST_BATCH_SIZES", (1, 2, 4, 8),
          "batch sizes the engine may render at once: waiting jobs of different sessions with the "
          "same size and steps share one batch; each size is a compiled/captured shape bucket "
          "(1 alone turns batching off)", type=parse_batch_sizes)
    o.add("--compile", "PROMPTCAST_COMPILE", "auto",
          "how the text encoders, the UNet and the tiny decoder run: eager; compile "
          "(torch.compile, every size and batch size at start-up); cuda-graphs (compile, then "
          "capture each bucket in a CUDA graph); auto: cuda-graphs on CUDA, eager on CPU",
          choices=["auto", "eager", "compile", "cuda-graphs"])
    o.add("--compile-cache", "PROMPTCAST_COMPILE_CACHE", None,
          "folder where compiled kernels persist, so restarts skip most compiling "
          "(default: ~/.cache/promptcast/torch-compile)")
    o.add("--compile-tuning", "PROMPTCAST_COMPILE_TUNING", "fast",
          "how hard the compiler tunes: off (its defaults); fast (cuDNN picks each convolution's "
          "fastest algorithm, 1x1 convolutions as matmuls); max (also autotunes every matmul and "
          "convolution: minutes more of cold start, cached)", choices=["off", "fast", "max"])
    o.add("--compile-scope", "PROMPTCAST_COMPILE_SCOPE", "whole",
          "what the compiler compiles: whole (each model as one graph: most fusion, longest cold "
          "start) or blocks (each distinct ResNet and transformer block of the UNet once, "
          "reused by every block of its shape: a shorter cold start); either is captured "
          "whole in CUDA graphs", choices=["whole", "blocks"])
    o.add("--prompt-cache-size", "PROMPTCAST_PROMPT_CACHE_SIZE", 256,
          "prompt embeddings kept in the LRU cache", type=positive_int)
    o.add("--cpu-threads", "PROMPTCAST_CPU_THREADS", 1,
          "torch threads when running on the CPU; 1 is fastest for the tiny default model, "
          "0 leaves torch's default", type=int)
    o.add("--max-message-bytes", "PROMPTCAST_MAX_MESSAGE_BYTES", 16 * 1024,
          "largest client message answered normally; larger ones get a too_large error",
          type=positive_int)
    o.add("--max-prompt-chars", "PROMPTCAST_MAX_PROMPT_CHARS", 1000, "longest prompt text accepted",
          type=positive_int)
    o.add("--max-image-bytes", "PROMPTCAST_MAX_IMAGE_BYTES", 4 * 1024 * 1024,
          "largest init image (img2img) accepted", type=positive_int)
    o.add("--max-sessions", "PROMPTCAST_MAX_SESSIONS", 64, "most clients connected at once",
          type=positive_int)
    o.add("--max-sessions-per-ip", "PROMPTCAST_MAX_SESSIONS_PER_IP", 16,
          "most clients connected at once from one address", type=positive_int)
    o.add("--max-messages-per-s", "PROMPTCAST_MAX_MESSAGES_PER_S", 50.0,
          "messages a connection may send per second on average; over it they are refused "
          "(rate_limited), and a flood that goes on is closed (1008)", type=float)
    o.add("--message-burst", "PROMPTCAST_MESSAGE_BURST", 100,
          "messages a connection may send at once, above the average rate", type=positive_int)
    o.add("--max-webrtc-peers", "PROMPTCAST_MAX_WEBRTC_PEERS", 32,
          "WebRTC video peers at once (each holds a video encoder); past it, offers are refused "
          "and frames stay on the WebSocket", type=positive_int)
    o.add("--max-mjpeg-viewers", "PROMPTCAST_MAX_MJPEG_VIEWERS", 16,
          "viewers of /stream.mjpg (MJPEG over HTTP, for OBS, VJ tools and <img> tags) at once; "
          "past it a new viewer gets 503", type=positive_int)
    o.add("--token", "PROMPTCAST_TOKEN", None,
          "require this bearer token on /ws (Authorization: Bearer, subprotocol bearer.TOKEN, or "
          "?token=); prefer the environment variable, which other users cannot see in ps")
    o.flag("--protect-metrics", "PROMPTCAST_PROTECT_METRICS", "require the token on /metrics too")
    o.multi("--allow-origin", "PROMPTCAST_ALLOW_ORIGIN",
            "a web origin whose pages may open /ws, e.g. https://studio.example; * allows any "
            "(default: only the server's own origin; clients that send no Origin always may)")
    o.add("--jpeg-quality", "PROMPTCAST_JPEG_QUALITY", 85, "JPEG quality of frames, 1-95",
          type=positive_int)
    o.add("--jpeg-encode", "PROMPTCAST_JPEG_ENCODE", "auto",
          "who encodes frames to JPEG: device (the engine, right after decoding: nvJPEG on a GPU, "
          "which needs torchvision); cpu (a worker thread beside the next render); auto: device "
          "on a GPU where nvJPEG works, else cpu", choices=["auto", "device", "cpu"])
    o.add("--video-convert", "PROMPTCAST_VIDEO_CONVERT", "auto",
          "who converts frames for WebRTC video to the encoder's I420: device (the engine, right "
          "after decoding); cpu (a worker thread, libswscale: milliseconds a frame); auto: device "
          "on a GPU, else cpu", choices=["auto", "device", "cpu"])
    o.add("--refine-after-ms", "PROMPTCAST_REFINE_AFTER_MS", 300,
          "when a client has been idle this long after its last update, send one higher-quality "
          "frame of the same picture (same seq, \"refined\": true); 0 turns refining off",
          type=int)
    o.add("--refine-steps", "PROMPTCAST_REFINE_STEPS", None,
          "steps of a refined frame (default: about twice the default steps the model supports)",
          type=positive_int)
    o.flag("--refine-full-vae", "PROMPTCAST_REFINE_FULL_VAE",
           "decode refined frames with the model's full autoencoder")
    o.multi("--ice-host", "PROMPTCAST_ICE_HOST",
            "WebRTC: an address to offer as host candidate (default: this machine's addresses; "
            "tests use 127.0.0.1)")
    o.multi("--ice-server", "PROMPTCAST_ICE_SERVER",
            "WebRTC: a STUN/TURN server, stun:host:port or turn:user:password@host:port "
            "(default: none, so no outside server is ever contacted)")
    o.add("--shutdown-timeout", "PROMPTCAST_SHUTDOWN_TIMEOUT", 10.0,
          "on SIGTERM, the most seconds to wait for clients to close and the render in flight to "
          "finish before exiting", type=float)
    o.add("--stuck-after", "PROMPTCAST_STUCK_AFTER", 30.0,
          "/readyz answers 503 once one engine call has run this many seconds", type=float)
    o.add("--idle-timeout", "PROMPTCAST_IDLE_TIMEOUT", 0.0,
          "close a WebSocket client that has sent nothing for this many seconds (close code 1000, "
          "reason \"idle timeout\"; the page reconnects when typing resumes); 0 never closes one",
          type=non_negative_float)
    o.add("--ws-ping-interval", "PROMPTCAST_WS_PING_INTERVAL", 20.0,
          "seconds between WebSocket keepalive pings; 0 sends none", type=non_negative_float)
    o.add("--ws-ping-timeout", "PROMPTCAST_WS_PING_TIMEOUT", 20.0,
          "drop a WebSocket peer that has not answered a ping within this many seconds (close "
          "1011); 0 waits forever", type=non_negative_float)
    o.add("--header-timeout", "PROMPTCAST_HEADER_TIMEOUT", 10.0,
          "close an HTTP connection whose request (head, and body if any) has not fully arrived "
          "this many seconds after its first byte, or after the connection opened (slowloris); "
          "0 waits forever",
          type=non_negative_float)
    o.add("--log-level", "PROMPTCAST_LOG_LEVEL", "info", "log level",
          choices=["debug", "info", "warning", "error"])


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        preset=args.preset, model=args.model, lora=args.lora, vae=args.vae, full_vae=args.full_vae,
        steps=args.steps,
        **{
            name: getattr(args, name)
            for name in ("device", "dtype", "guidance", "max_steps", "sizes", "size",
                         "prompt_cache_size", "cpu_threads", "batch_sizes", "compile",
                         "compile_cache", "compile_tuning", "compile_scope", "jpeg_encode",
                         "video_convert")
            if hasattr(args, name)
        },
        **({"jpeg_quality": min(args.jpeg_quality, 95)} if hasattr(args, "jpeg_quality") else {}),
    )


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(
        engine=engine_config_from_args(args),
        host=args.host,
        port=args.port,
        max_message_bytes=args.max_message_bytes,
        max_prompt_chars=args.max_prompt_chars,
        max_image_bytes=args.max_image_bytes,
        max_sessions=args.max_sessions,
        max_sessions_per_ip=args.max_sessions_per_ip,
        max_messages_per_s=args.max_messages_per_s,
        message_burst=args.message_burst,
        max_webrtc_peers=args.max_webrtc_peers,
        max_mjpeg_viewers=args.max_mjpeg_viewers,
        token=args.token or None,
        protect_metrics=args.protect_metrics,
        allowed_origins=tuple(args.allow_origin),
        refine_after_ms=max(0, args.refine_after_ms),
        refine_steps=args.refine_steps,
        refine_full_vae=args.refine_full_vae,
        ice_hosts=tuple(args.ice_host),
        ice_servers=tuple(args.ice_server),
        log_level=args.log_level,
        shutdown_timeout_s=args.shutdown_timeout,
        stuck_after_s=args.stuck_after,
        idle_timeout_s=args.idle_timeout,
        ws_ping_interval_s=args.ws_ping_interval,
        ws_ping_timeout_s=args.ws_ping_timeout,
        header_timeout_s=args.header_timeout,
    )


def uvicorn_config(app: Any, config: Config) -> Any:
    import uvicorn

    from promptcast.transport.http import http_protocol
    from promptcast.transport.ws_keepalive import KeepaliveProtocol

    return uvicorn.Config(
        app, host=config.host, port=config.port, lifespan="on", log_level=config.log_level,
        # uvicorn has no timeout for a request head: without this, a client that never finishes
        # its request holds a connection for ever (slowloris).
        http=http_protocol(config.header_timeout_s, on_shutdown=lambda: _drain(app)),
        # A peer that answers no ping is dropped even when it stopped reading (its frames
        # fill the socket, and uvicorn's own close would wait for them to drain for ever).
        ws=KeepaliveProtocol,
        # uvicorn takes None for "off"; 0 would mean a ping timeout that fires at once.
        ws_ping_interval=config.ws_ping_interval_s or None,
        ws_ping_timeout=config.ws_ping_timeout_s or None,
        ws_max_size=max(TRANSPORT_MAX_BYTES, 4 * config.max_message_bytes,
                        config.max_image_bytes + 1024),
        # Frames are JPEG (incompressible) and prompts are tiny; compression would only add
        # CPU time and a decompression-bomb surface.
        ws_per_message_deflate=False,
        # On SIGTERM uvicorn stops accepting, closes each WebSocket with 1012 (service restart)
        # and waits at most half the shutdown timeout for connections and tasks to end; the
        # runtime then waits at most the other half for the render in flight.
        timeout_graceful_shutdown=math.ceil(config.shutdown_timeout_s / 2),
    )


def _drain(app: Any) -> None:
    """A graceful shutdown began: end MJPEG streams, refuse new sessions (see Runtime.drain)."""
    runtime = getattr(app.state, "runtime", None)
    if runtime is not None:
        runtime.drain()


async def serve(config: Config) -> int:
    import uvicorn

    from promptcast.app import create_app
    from promptcast.engine.pipeline import Engine

    failed: list[BaseException] = []

    def on_failure(exc: BaseException) -> None:
        failed.append(exc)
        server.should_exit = True

    app = create_app(config, Engine(config.engine), on_failure)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # From the first signal on, /readyz says 503 and no new session opens.
            runtime = getattr(app.state, "runtime", None)
            if runtime is not None:
                runtime.draining = True
            super().handle_exit(sig, frame)

    server = Server(uvicorn_config(app, config))  # sets up uvicorn's loggers
    if config.log_level != "debug":
        from promptcast.runtime.logs import limit_rates

        limit_rates()
    log.info("promptcast %s: preset %s, model %s, http://%s:%d", __version__,
             config.engine.preset or "(default)", config.engine.model or "(preset's)",
             config.host, config.port)
    if not is_loopback(config.host) and config.token is None:
        log.warning(
            "!!! listening on %s without a token: anyone who can reach this port can use the "
            "GPU. Set PROMPTCAST_TOKEN (or --token), or bind to 127.0.0.1. !!!", config.host,
        )
    await server.serve()
    if getattr(app.state, "runtime", None) is not None and app.state.runtime.abandoned:
        # The engine thread is stuck in a device call; waiting for it would hang the exit.
        logging.shutdown()
        os._exit(1)
    if failed:
        print(f"promptcast: error: {failed[0]}", file=sys.stderr)
        return 1
    return 0


def quiet_model_libraries() -> None:
    """Loading progress bars and diffusers' notes about component types are noise in a server
    log (the embedded model's tiny autoencoder triggers two); --log-level debug keeps them."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()


def cmd_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if config.log_level != "debug":
        quiet_model_libraries()
    from promptcast.transport.webrtc import parse_ice_server

    try:
        for url in config.ice_servers:
            parse_ice_server(url)
    except ValueError as exc:
        print(f"promptcast: error: --ice-server: {exc}", file=sys.stderr)
        return 2
    preset = PRESETS[config.engine.preset or "tiny"]
    steps = config.engine.steps
    if config.engine.preset and steps is not None and steps not in preset.steps:
        print(f"promptcast: error: preset {preset.name} supports {list(preset.steps)} steps, "
              f"not {steps}", file=sys.stderr)
        return 2
    try:
        # Fail fast, with a clear message, before the server starts.
        read_model_index(config.engine.model or preset.base or "", fetch_hint(preset, config.engine))
    except ModelLoadError as exc:
        print(f"promptcast: error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(config))


def _download_parser(sub: Any) -> None:
    p = sub.add_parser(
        "download", help="fill the Hugging Face cache with a preset's weights",
        description="Fetch what `promptcast serve` with the same options loads, so that it can "
        "later run offline (HF_HUB_OFFLINE=1). Needs internet.",
    )
    _model_options(Options(p))


def cmd_download(args: argparse.Namespace) -> int:
    from promptcast.engine.download import download

    try:
        for path in download(engine_config_from_args(args)):
            print(path)
    except ModelLoadError as exc:
        print(f"promptcast: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _osc_parser(sub: Any) -> None:
    # The bridge is a client of the server, so it lives in the client SDK (client/python); this
    # command only makes it reachable by the name installations look for.
    # main() hands its arguments over untouched (argparse would take --help for itself).
    sub.add_parser("osc", add_help=False, help="bridge OSC to a running server "
                   "(promptcast-client osc; `promptcast osc --help` lists its options)")


def cmd_osc(argv: list[str]) -> int:
    try:
        from promptcast_client.osc import main as osc_main
    except ImportError as exc:
        print(f"promptcast osc: needs the Python client with its OSC extra ({exc}): "
              "pip install 'client/python[osc]' (from a clone of promptcast)", file=sys.stderr)
        return 2
    return osc_main(argv)


def build_parser() -> argparse.ArgumentParser:
    from promptcast import bench

    parser = argparse.ArgumentParser(
        prog="promptcast",
        description="Real-time text-to-image server: type a prompt, watch the picture follow.",
        epilog="Each command documents its options: `promptcast serve --help`, "
        "`promptcast bench --help`. Every option has an environment-variable twin, "
        "named in its help (--port: PROMPTCAST_PORT).",
    )
    parser.add_argument("--version", action="version", version=f"promptcast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _download_parser(sub)
    _osc_parser(sub)
    bench.add_parser(sub)
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "download": cmd_download,
}


def main(argv: Sequence[str] | None = None) -> None:
    from promptcast import bench

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["osc"]:
        sys.exit(cmd_osc(argv[1:]))
    args = build_parser().parse_args(argv)
    handler = COMMANDS.get(args.command) or bench.run_from_args
    sys.exit(handler(args))
