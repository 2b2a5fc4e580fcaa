"""One client's state. Messages go in, actions for the caller come out.

The caller (the runtime) stamps each message with its arrival time and carries out the
actions: Submit a job to the scheduler, or Reply with a message to this client.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from promptcast.core.limits import Limits
from promptcast.core.messages import (
    ErrorCode,
    ErrorMessage,
    ImageMessage,
    PromptMessage,
    ProtocolError,
    ServerMessage,
    Unchanged,
    WebRTCOffer,
    parse_client_text,
)
from promptcast.core.ratelimit import TokenBucket, Verdict
from promptcast.core.scheduler import Job, RenderRequest

DEFAULT_STRENGTH = 0.5  # img2img, as the SD-Turbo / SDXL-Turbo cards' examples use
MAGIC = {"jpeg": (b"\xff\xd8\xff",), "png": (b"\x89PNG\r\n\x1a\n",)}


@dataclass(frozen=True)
class RefinePolicy:
    """Once a session has been idle this long after its last update, and that update's frame
    has been rendered, render the same picture once more at higher quality."""

    idle_s: float
    steps: int | None  # steps for the refined frame (or the session's, if more); None: the session's
    full_vae: bool  # decode the refined frame with the full autoencoder

    def to_json(self) -> dict[str, object]:
        return {"after_ms": round(self.idle_s * 1e3), "steps": self.steps, "full_vae": self.full_vae}


@dataclass(frozen=True)
class Submit:
    job: Job


@dataclass(frozen=True)
class Reply:
    message: ServerMessage


@dataclass(frozen=True)
class StartWebRTC:
    """Answer this SDP offer; the session's frames then go out as WebRTC video."""

    offer_sdp: str


@dataclass(frozen=True)
class Close:
    """Close the connection (after sending what is queued): the client is abusing it, or idle."""

    code: int
    reason: str


# RFC 6455: the endpoint received a message that violates its policy.
CLOSE_POLICY_VIOLATION = 1008
# RFC 6455: normal closure. Used for the idle timeout: nothing went wrong, so a client should
# not reconnect by itself, only when it has something to send again.
CLOSE_NORMAL = 1000
IDLE_REASON = "idle timeout"

Action = Submit | Reply | StartWebRTC | Close


def _error(code: str, message: str, seq: int | None = None) -> list[Action]:
    return [Reply(ErrorMessage(code, message, seq))]


class Session:
    def __init__(
        self, session_id: str, limits: Limits, seed: int, refine: RefinePolicy | None = None,
        opened_at: float = 0.0,
    ) -> None:
        self.id = session_id
        self.limits = limits
        self.refine = refine
        self._rate = TokenBucket(limits.max_messages_per_s, limits.message_burst)
        # The settings persist between updates: keeping one seed (and with it one initial
        # noise) while the text changes is what makes frames morph instead of flicker.
        self.text = ""
        self.seed = seed
        self.steps = limits.default_steps
        self.width, self.height = limits.default_size
        self.image: bytes | None = None  # img2img init image, as sent
        self.strength = DEFAULT_STRENGTH
        self.last_seq = -1
        self._image_header: ImageMessage | None = None  # waiting for its binary message
        self._target: Job | None = None  # the newest job submitted: what the picture will show
        self._last_update_at = float("-inf")
        self._target_rendered = False  # the target's first frame exists: refining may start
        self._refined_seq = -1  # the seq last refined (or tried): one refine per update
        self._heard_at = opened_at  # the last message of any kind (or the opening): idle timeout
        self._answered_at = opened_at  # when the newest update's picture was rendered

    def _over_rate(self, now: float) -> list[Action] | None:
        """None when the message may be handled; else what to do instead of handling it."""
        verdict = self._rate.take(now)
        if verdict is Verdict.ACCEPT:
            return None
        if verdict is Verdict.CLOSE:
            return [Close(CLOSE_POLICY_VIOLATION, "message flood")]
        if verdict is Verdict.REFUSE_QUIETLY:
            return []
        return _error(
            ErrorCode.RATE_LIMITED,
            f"more than {self.limits.max_messages_per_s:g} messages a second (bursts of "
            f"{self.limits.message_burst}): messages are being dropped; send the newest state "
            "again once you slow down",
        )

    def receive_text(self, raw: str, now: float) -> list[Action]:
        self._heard_at = now
        refused = self._over_rate(now)
        if refused is not None:
            return refused
        actions: list[Action] = []
        if self._image_header is not None:
            header, self._image_header = self._image_header, None
            actions += _error(
                ErrorCode.IMAGE_MISSING,
                "an image message must be followed directly by one binary message; image ignored",
                header.seq,
            )
        try:
            msg = parse_client_text(raw, self.limits)
        except ProtocolError as exc:
            return [*actions, *_error(exc.code, exc.message, exc.seq)]
        if isinstance(msg, WebRTCOffer):  # signalling: no seq, no picture change
            return [*actions, StartWebRTC(msg.sdp)]
        if msg.seq <= self.last_seq:
            return [
                *actions,
                *_error(
                    ErrorCode.STALE_SEQ,
                    f"seq {msg.seq} is not greater than the last seq {self.last_seq}; "
                    "seq must increase with every message",
                    msg.seq,
                ),
            ]
        self.last_seq = msg.seq
        self._last_update_at = now
        if msg.strength is not None:
            self.strength = msg.strength
        if isinstance(msg, ImageMessage):
            if not msg.clear:
                self._image_header = msg
                return actions  # the update happens when the image arrives
            self.image = None
        else:
            self._apply(msg)
        return [*actions, *self._update(msg.seq, now)]

    def receive_binary(self, data: bytes, now: float) -> list[Action]:
        self._heard_at = now
        header, self._image_header = self._image_header, None
        if header is None:
            # An image's binary part was counted with its header; a stray one counts itself.
            refused = self._over_rate(now)
            if refused is not None:
                return refused
            return _error(
                ErrorCode.BINARY_UNEXPECTED,
                f"binary message of {len(data)} bytes not expected; send an 'image' message first",
            )
        if len(data) > self.limits.max_image_bytes:
            return _error(
                ErrorCode.TOO_LARGE,
                f"image of {len(data)} bytes is over the {self.limits.max_image_bytes}-byte limit",
                header.seq,
            )
        assert header.format is not None
        if not data.startswith(MAGIC[header.format]):
            return _error(ErrorCode.BAD_IMAGE, f"the binary message is not a {header.format} image",
                          header.seq)
        self.image = data
        self._last_update_at = now
        return self._update(header.seq, now)

    def _apply(self, msg: PromptMessage) -> None:
        self.text = msg.text
        if msg.seed is not None:
            self.seed = msg.seed
        if msg.steps is not None:
            self.steps = msg.steps
        if msg.width is not None and msg.height is not None:
            self.width, self.height = msg.width, msg.height

    def _update(self, seq: int, now: float) -> list[Action]:
        request = RenderRequest(
            self.text, self.seed, self.steps, self.width, self.height, image=self.image,
            strength=self.strength if self.image is not None else 1.0,
        )
        # Compare with the newest request, not the last frame shown: if "cat" was shown
        # and "cats" is on its way, a return to "cat" must still render, or the picture
        # would end on "cats".
        if self._target is not None and self._target.request == request:
            return [Reply(Unchanged(seq, self._target.seq))]
        self._target = Job(self.id, seq, request, now)
        self._target_rendered = False
        return [Submit(self._target)]

    def render_failed(self, job: Job) -> None:
        """The engine could not render `job`: the same request sent again must retry."""
        if self._target is job:
            self._target = None

    def frame_rendered(self, job: Job, now: float) -> None:
        if self._target is job:
            self._target_rendered = True
            self._answered_at = now

    def refine_due_at(self) -> float | None:
        """When a refine of the current picture may start (caller's clock), if one is owed."""
        if self.refine is None or not self._target_rendered or self._target is None:
            return None
        if self._refined_seq >= self._target.seq:
            return None
        return self._last_update_at + self.refine.idle_s

    def refine_job(self, now: float) -> Job | None:
        """The refine job owed now, if any (at most one per update)."""
        due = self.refine_due_at()
        if due is None or now < due or self._target is None or self.refine is None:
            return None
        target = self._target
        self._refined_seq = target.seq
        # Never fewer steps than the session itself asked for.
        steps = max(self.refine.steps or 0, target.request.steps)
        request = replace(target.request, steps=steps, full_vae=self.refine.full_vae)
        if request == target.request:
            return None  # nothing to improve
        return Job(self.id, target.seq, request, now, refined=True)

    # ------------------------------------------------------------ idle timeout

    def idle_due_at(self, now: float) -> float | None:
        """When the session counts as idle (caller's clock), or None with no idle timeout.
        Any message counts as activity, even one that is refused: the client is there. So does
        a picture still owed for its newest update: on a loaded server a render can outlast a
        short timeout, and closing then would lose the picture of the last keystroke. The
        clock runs from that picture instead (if owed now, check again a timeout later)."""
        timeout = self.limits.idle_timeout_s
        if timeout <= 0:
            return None
        if self._target is not None and not self._target_rendered:
            return now + timeout
        return max(self._heard_at, self._answered_at) + timeout

    def idle_close(self, now: float) -> Close | None:
        """The close to send if the session has been idle long enough by `now`, else None."""
        due = self.idle_due_at(now)
        if due is None or now < due:
            return None
        return Close(CLOSE_NORMAL, IDLE_REASON)
