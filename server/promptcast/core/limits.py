"""What a client may ask for. Built once at start-up from the config and the loaded model."""

from __future__ import annotations

from dataclasses import dataclass

SEED_MAX = 2**32 - 1
SEQ_MAX = 2**53 - 1  # largest integer a JavaScript client can count to exactly


@dataclass(frozen=True)
class Limits:
    sizes: tuple[tuple[int, int], ...]  # allowed (width, height) pairs: the engine's shape buckets
    default_size: tuple[int, int]
    steps: tuple[int, ...]  # allowed denoising step counts
    default_steps: int
    max_message_bytes: int = 16 * 1024
    max_prompt_chars: int = 1000
    max_image_bytes: int = 4 * 1024 * 1024  # one init image (JPEG or PNG) for img2img
    max_messages_per_s: float = 50.0  # per connection, on average (token bucket)
    message_burst: int = 100  # messages a connection may send at once
    max_webrtc_peers: int = 32  # video peer connections the server holds at once
    max_mjpeg_viewers: int = 16  # /stream.mjpg viewers the server serves at once
    # Connection liveness, reported so a client can plan around it (0: off). Sending anything
    # resets the idle timeout; pings are answered by any WebSocket library by itself.
    idle_timeout_s: float = 0.0  # no message for this long: the server closes with 1000
    ping_interval_s: float = 20.0  # the server pings this often
    ping_timeout_s: float = 20.0  # and drops a peer whose pong is this late

    def __post_init__(self) -> None:
        if self.default_size not in self.sizes:
            raise ValueError(f"default size {self.default_size} is not among {self.sizes}")
        if self.default_steps not in self.steps:
            raise ValueError(f"default steps {self.default_steps} is not among {self.steps}")

    def to_json(self) -> dict[str, object]:
        return {
            "max_message_bytes": self.max_message_bytes,
            "max_prompt_chars": self.max_prompt_chars,
            "max_image_bytes": self.max_image_bytes,
            "max_messages_per_s": self.max_messages_per_s,
            "message_burst": self.message_burst,
            "max_webrtc_peers": self.max_webrtc_peers,
            "max_mjpeg_viewers": self.max_mjpeg_viewers,
            "idle_timeout_s": self.idle_timeout_s,
            "ping_interval_s": self.ping_interval_s,
            "ping_timeout_s": self.ping_timeout_s,
            "seed_max": SEED_MAX,
            "seq_max": SEQ_MAX,
        }
