"""The control protocol spoken over /ws: parsing client messages and serialising server ones.

Version 1. docs/protocol.md is the reference for clients; keep the two in step. Parsing is
strict about what it understands (types, ranges) and lenient about what it does not (unknown
fields are ignored, so newer clients work against older servers).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from promptcast.core.limits import SEED_MAX, SEQ_MAX, Limits

PROTOCOL_VERSION = 1


class ErrorCode:
    """Stable, machine-readable error codes; the message beside each is for people."""

    TOO_LARGE = "too_large"
    BAD_JSON = "bad_json"
    BINARY_UNEXPECTED = "binary_unexpected"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_FIELD = "missing_field"
    BAD_TYPE = "bad_type"
    OUT_OF_RANGE = "out_of_range"
    STALE_SEQ = "stale_seq"
    IMAGE_MISSING = "image_missing"
    BAD_IMAGE = "bad_image"
    WEBRTC_FAILED = "webrtc_failed"
    NOT_READY = "not_ready"
    SERVER_FULL = "server_full"
    ENGINE_ERROR = "engine_error"
    RATE_LIMITED = "rate_limited"


class ProtocolError(Exception):
    """A client message that cannot be acted on. The connection stays open."""

    def __init__(self, code: str, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.seq = seq


# ---------------------------------------------------------------- client -> server


@dataclass(frozen=True)
class PromptMessage:
    """A prompt update. Omitted settings keep the session's current value."""

    seq: int
    text: str
    seed: int | None = None
    steps: int | None = None
    width: int | None = None
    height: int | None = None
    strength: float | None = None


@dataclass(frozen=True)
class ImageMessage:
    """An init image for img2img follows as the next (binary) message, unless `clear`."""

    seq: int
    format: str | None  # "jpeg" | "png"; None when clearing
    clear: bool = False
    strength: float | None = None


@dataclass(frozen=True)
class WebRTCOffer:
    """The client asks for its frames as WebRTC video (SDP offer, answered with webrtc_answer)."""

    sdp: str


ClientMessage = PromptMessage | ImageMessage | WebRTCOffer
IMAGE_FORMATS = ("jpeg", "png")


def parse_client_text(raw: str, limits: Limits) -> ClientMessage:
    """Parse one text frame. Raises ProtocolError naming what is wrong."""
    if len(raw.encode("utf-8")) > limits.max_message_bytes:
        raise ProtocolError(
            ErrorCode.TOO_LARGE,
            f"message is larger than the {limits.max_message_bytes}-byte limit",
        )
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"message is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_JSON, "message must be a JSON object")
    if (field := _lone_surrogate_field(obj)) is not None:
        seq = obj.get("seq")
        raise ProtocolError(
            ErrorCode.BAD_TYPE,
            f"field {_short(field)} is not valid text: it holds half of a UTF-16 surrogate pair "
            "(an emoji cut in two?)",
            seq if type(seq) is int and 0 <= seq <= SEQ_MAX else None,
        )
    kind = obj.get("type")
    if kind is None:
        raise ProtocolError(ErrorCode.MISSING_FIELD, "field 'type' is required")
    if kind == "prompt":
        return _parse_prompt(obj, limits)
    if kind == "image":
        return _parse_image(obj)
    if kind == "webrtc_offer":
        sdp = obj.get("sdp")
        if not isinstance(sdp, str) or not sdp:
            raise ProtocolError(
                ErrorCode.MISSING_FIELD if sdp is None else ErrorCode.BAD_TYPE,
                "field 'sdp' must be a non-empty string (an SDP offer)",
            )
        return WebRTCOffer(sdp)
    raise ProtocolError(
        ErrorCode.UNKNOWN_TYPE,
        f"unknown message type {_short(kind)}; expected 'prompt', 'image' or 'webrtc_offer'",
    )


def _lone_surrogate_field(obj: Mapping[str, Any]) -> str | None:
    """The first field whose string holds a lone UTF-16 surrogate: valid JSON ("\\ud83d", what a
    client sends when it slices a string through an emoji) but not text. Caught here, it is
    this client's error; let through, the prompt's tokenizer raised on it in the engine, which
    failed the whole batch it was in, every other session's job too."""
    for key, value in obj.items():
        if isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return str(key)
    return None


def _parse_image(obj: Mapping[str, Any]) -> ImageMessage:
    seq = _int_field(obj, "seq", 0, SEQ_MAX, required=True)
    assert seq is not None
    try:
        clear = obj.get("clear", False)
        if not isinstance(clear, bool):
            raise ProtocolError(
                ErrorCode.BAD_TYPE, f"field 'clear' must be a boolean, not {_json_type(clear)}"
            )
        strength = _strength_field(obj)
        if clear:
            return ImageMessage(seq, None, clear=True, strength=strength)
        fmt = obj.get("format")
        if fmt is None:
            raise ProtocolError(ErrorCode.MISSING_FIELD, "field 'format' is required")
        if fmt not in IMAGE_FORMATS:
            raise ProtocolError(
                ErrorCode.OUT_OF_RANGE, f"image format {_short(fmt)} is not one of 'jpeg', 'png'"
            )
    except ProtocolError as exc:
        exc.seq = seq
        raise
    return ImageMessage(seq, fmt, strength=strength)


def _strength_field(obj: Mapping[str, Any]) -> float | None:
    value = obj.get("strength")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(
            ErrorCode.BAD_TYPE, f"field 'strength' must be a number, not {_json_type(value)}"
        )
    if not 0.0 < value <= 1.0:
        raise ProtocolError(
            ErrorCode.OUT_OF_RANGE, f"field 'strength' is {value}; it must be in (0, 1]"
        )
    return float(value)


def _parse_prompt(obj: Mapping[str, Any], limits: Limits) -> PromptMessage:
    seq = _int_field(obj, "seq", 0, SEQ_MAX, required=True)
    assert seq is not None
    try:
        text = obj.get("text")
        if text is None:
            raise ProtocolError(ErrorCode.MISSING_FIELD, "field 'text' is required")
        if not isinstance(text, str):
            raise ProtocolError(
                ErrorCode.BAD_TYPE, f"field 'text' must be a string, not {_json_type(text)}"
            )
        if len(text) > limits.max_prompt_chars:
            raise ProtocolError(
                ErrorCode.OUT_OF_RANGE,
                f"field 'text' is {len(text)} characters; the limit is {limits.max_prompt_chars}",
            )
        seed = _int_field(obj, "seed", 0, SEED_MAX)
        steps = _int_field(obj, "steps", min(limits.steps), max(limits.steps))
        if steps is not None and steps not in limits.steps:
            raise ProtocolError(
                ErrorCode.OUT_OF_RANGE, f"steps {steps} is not one of {list(limits.steps)}"
            )
        strength = _strength_field(obj)
        width = _int_field(obj, "width", 1, 1 << 16)
        height = _int_field(obj, "height", 1, 1 << 16)
        if (width is None) != (height is None):
            raise ProtocolError(
                ErrorCode.MISSING_FIELD, "'width' and 'height' must be given together"
            )
        if width is not None and height is not None and (width, height) not in limits.sizes:
            allowed = ", ".join(f"{w}x{h}" for w, h in limits.sizes)
            raise ProtocolError(
                ErrorCode.OUT_OF_RANGE, f"size {width}x{height} is not allowed; allowed: {allowed}"
            )
    except ProtocolError as exc:
        exc.seq = seq
        raise
    return PromptMessage(
        seq=seq, text=text, seed=seed, steps=steps, width=width, height=height, strength=strength
    )


def _int_field(
    obj: Mapping[str, Any], name: str, lo: int, hi: int, *, required: bool = False
) -> int | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise ProtocolError(ErrorCode.MISSING_FIELD, f"field '{name}' is required")
        return None
    # bool is an int in Python but never what a client meant; 3.0 is a float in JSON terms.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(
            ErrorCode.BAD_TYPE, f"field '{name}' must be an integer, not {_json_type(value)}"
        )
    if not lo <= value <= hi:
        raise ProtocolError(
            ErrorCode.OUT_OF_RANGE, f"field '{name}' is {value}; it must be in {lo}..{hi}"
        )
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------- server -> client


@dataclass(frozen=True)
class Hello:
    session_id: str
    seed: int
    model: Mapping[str, object]
    limits: Limits
    server: str
    refine: Mapping[str, object] | None = None
    channel: str | None = None  # the channel the session joined (/ws?channel=NAME), if any
    ice_servers: tuple[Mapping[str, str], ...] = ()  # for the client's peer connection

    def to_json(self) -> dict[str, object]:
        session: dict[str, object] = {"id": self.session_id, "seed": self.seed}
        if self.channel is not None:
            session["channel"] = self.channel
        return {
            "type": "hello",
            "protocol": PROTOCOL_VERSION,
            "server": self.server,
            "session": session,
            "model": {
                **self.model,
                "sizes": {
                    "default": list(self.limits.default_size),
                    "allowed": [list(s) for s in self.limits.sizes],
                },
                "steps": {"default": self.limits.default_steps, "allowed": list(self.limits.steps)},
            },
            "limits": self.limits.to_json(),
            "refine": self.refine,
            "webrtc": {"ice_servers": [dict(s) for s in self.ice_servers]},
        }


@dataclass(frozen=True)
class ErrorMessage:
    code: str
    message: str
    seq: int | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"type": "error", "code": self.code, "message": self.message}
        if self.seq is not None:
            out["seq"] = self.seq
        return out


@dataclass(frozen=True)
class Unchanged:
    """The update at `seq` asks for exactly the picture of `same_as`, so no new frame comes."""

    seq: int
    same_as: int

    def to_json(self) -> dict[str, object]:
        return {"type": "unchanged", "seq": self.seq, "same_as": self.same_as}


@dataclass(frozen=True)
class FrameHeader:
    """Sent immediately before the binary message that holds the encoded image."""

    seq: int
    width: int
    height: int
    seed: int
    steps: int
    format: str
    timings: Mapping[str, float] = field(default_factory=dict)
    refined: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "type": "frame",
            "seq": self.seq,
            "width": self.width,
            "height": self.height,
            "seed": self.seed,
            "steps": self.steps,
            "format": self.format,
            "refined": self.refined,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


@dataclass(frozen=True)
class WebRTCAnswer:
    sdp: str

    def to_json(self) -> dict[str, object]:
        return {"type": "webrtc_answer", "sdp": self.sdp}


@dataclass(frozen=True)
class VideoState:
    """Whether this session's frames now travel as WebRTC video or as WebSocket frames."""

    transport: str  # "webrtc" | "websocket"
    reason: str = ""

    def to_json(self) -> dict[str, object]:
        return {"type": "video", "transport": self.transport, "reason": self.reason}


@dataclass(frozen=True)
class Notice:
    """Something the client should know about `seq` that is not an error: it was rendered."""

    code: str
    message: str
    seq: int

    def to_json(self) -> dict[str, object]:
        return {"type": "notice", "code": self.code, "message": self.message, "seq": self.seq}


class NoticeCode:
    PROMPT_TRUNCATED = "prompt_truncated"


ServerMessage = Hello | ErrorMessage | Unchanged | FrameHeader | WebRTCAnswer | VideoState | Notice


def serialise(message: ServerMessage) -> str:
    return json.dumps(message.to_json(), separators=(",", ":"))
