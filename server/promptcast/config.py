"""The one configuration object, built once by the CLI (or a test) and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field

from promptcast.engine.model_index import EMBEDDED_MODEL


@dataclass(frozen=True)
class EngineConfig:
    model: str = str(EMBEDDED_MODEL)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (fp16 on GPU, fp32 on CPU) | float32 | float16 | bfloat16
    steps: int | None = None  # default steps; None: the model family's default
    max_steps: int | None = None  # None: the model family's maximum
    sizes: tuple[tuple[int, int], ...] = ()  # allowed sizes; (): half, 1x and 2x native
    size: tuple[int, int] | None = None  # default size; None: native
    prompt_cache_size: int = 256
    cpu_threads: int = 1


@dataclass(frozen=True)
class Config:
    engine: EngineConfig = field(default_factory=EngineConfig)
    host: str = "127.0.0.1"
    port: int = 8000
    max_message_bytes: int = 16 * 1024
    max_prompt_chars: int = 1000
    max_sessions: int = 64
    jpeg_quality: int = 85
    log_level: str = "info"
