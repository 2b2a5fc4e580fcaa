"""The one configuration object, built once by the CLI (or a test) and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EngineConfig:
    preset: str | None = None  # a name in engine.presets.PRESETS; None: "tiny", or inferred for --model
    model: str | None = None  # hub id or folder; None: the preset's base model
    lora: bool = False  # use the preset's LoRA instead of its UNet checkpoint (sdxl-lightning)
    vae: str | None = None  # decoder (tiny or full) replacing the preset's
    full_vae: bool = False  # decode with the model's full autoencoder instead of the tiny one
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (fp16 on GPU, fp32 on CPU) | float32 | float16 | bfloat16
    steps: int | None = None  # default steps; None: the preset's default
    max_steps: int | None = None  # None: the preset's maximum
    guidance: float | None = None  # None: the preset's
    sizes: tuple[tuple[int, int], ...] = ()  # allowed sizes; (): half, 1x and 2x native
    size: tuple[int, int] | None = None  # default size; None: native
    prompt_cache_size: int = 256
    cpu_threads: int = 1
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)  # batches of sessions' jobs the engine runs at once
    compile: str = "auto"  # auto (cuda-graphs on CUDA, eager on CPU) | eager | compile | cuda-graphs
    compile_cache: str | None = None  # folder for compiled kernels; None: ~/.cache/promptcast/torch-compile
    compile_tuning: str = "fast"  # off | fast | max: how hard inductor tunes (engine/compile.py)
    compile_scope: str = "whole"  # whole | blocks: compile the UNet whole or by its repeated blocks
    jpeg_quality: int = 85
    jpeg_encode: str = "auto"  # auto | device | cpu: who encodes JPEGs (engine/image.py)
    video_convert: str = "auto"  # auto | device | cpu: who makes video frames' I420 (engine/yuv.py)


@dataclass(frozen=True)
class Config:
    engine: EngineConfig = field(default_factory=EngineConfig)
    host: str = "127.0.0.1"
    port: int = 8000
    max_message_bytes: int = 16 * 1024
    max_prompt_chars: int = 1000
    max_image_bytes: int = 4 * 1024 * 1024
    max_sessions: int = 64
    max_sessions_per_ip: int = 16
    max_messages_per_s: float = 50.0  # per connection; over it: rate_limited, then close 1008
    message_burst: int = 100
    max_webrtc_peers: int = 32  # video peer connections at once; past it, frames stay on /ws
    max_mjpeg_viewers: int = 16  # /stream.mjpg viewers at once; past it, 503
    token: str | None = None  # bearer token required on /ws (and /metrics with protect_metrics)
    protect_metrics: bool = False  # /metrics needs the token too
    allowed_origins: tuple[str, ...] = ()  # (): only the server's own origin; "*": any
    refine_after_ms: int = 300  # idle time before a refined frame; 0: never refine
    refine_steps: int | None = None  # None: about twice the default steps the model supports
    refine_full_vae: bool = False  # refined frames decoded with the full autoencoder
    log_level: str = "info"
    shutdown_timeout_s: float = 10.0  # on SIGTERM: the most to wait for clients and the engine
    stuck_after_s: float = 30.0  # /readyz says 503 once one engine call runs longer
    idle_timeout_s: float = 0.0  # close a WebSocket that sent nothing this long (1000); 0: never
    ws_ping_interval_s: float = 20.0  # WebSocket keepalive ping every this often; 0: no pings
    ws_ping_timeout_s: float = 20.0  # a ping unanswered this long drops the peer; 0: wait forever
    header_timeout_s: float = 10.0  # an HTTP request (head, any body) must arrive within this; 0: off
    ice_hosts: tuple[str, ...] = ()  # host candidates to offer; (): the machine's addresses
    ice_servers: tuple[str, ...] = ()  # stun:/turn: URLs; (): none, no public server is contacted
