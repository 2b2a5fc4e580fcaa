"""One client's state. Messages go in, actions for the caller come out.

The caller (the runtime) stamps each message with its arrival time and carries out the
actions: Submit a job to the scheduler, or Reply with a message to this client.
"""

from __future__ import annotations

from dataclasses import dataclass

from promptcast.core.limits import Limits
from promptcast.core.messages import (
    ErrorCode,
    ErrorMessage,
    ProtocolError,
    ServerMessage,
    Unchanged,
    parse_client_text,
)
from promptcast.core.scheduler import Job, RenderRequest


@dataclass(frozen=True)
class Submit:
    job: Job


@dataclass(frozen=True)
class Reply:
    message: ServerMessage


Action = Submit | Reply


class Session:
    def __init__(self, session_id: str, limits: Limits, seed: int) -> None:
        self.id = session_id
        self.limits = limits
        # The settings persist between prompts: keeping one seed (and with it one initial
        # noise) while the text changes is what makes frames morph instead of flicker.
        self.seed = seed
        self.steps = limits.default_steps
        self.width, self.height = limits.default_size
        self.last_seq = -1
        self._target: Job | None = None  # the newest job submitted: what the picture will show

    def receive_text(self, raw: str, now: float) -> list[Action]:
        try:
            msg = parse_client_text(raw, self.limits)
        except ProtocolError as exc:
            return [Reply(ErrorMessage(exc.code, exc.message, exc.seq))]
        if msg.seq <= self.last_seq:
            return [
                Reply(
                    ErrorMessage(
                        ErrorCode.STALE_SEQ,
                        f"seq {msg.seq} is not greater than the last seq {self.last_seq}; "
                        "seq must increase with every message",
                        msg.seq,
                    )
                )
            ]
        self.last_seq = msg.seq
        if msg.seed is not None:
            self.seed = msg.seed
        if msg.steps is not None:
            self.steps = msg.steps
        if msg.width is not None and msg.height is not None:
            self.width, self.height = msg.width, msg.height
        request = RenderRequest(msg.text, self.seed, self.steps, self.width, self.height)
        # Compare with the newest request, not the last frame shown: if "cat" was shown
        # and "cats" is on its way, a return to "cat" must still render, or the picture
        # would end on "cats".
        if self._target is not None and self._target.request == request:
            return [Reply(Unchanged(msg.seq, self._target.seq))]
        self._target = Job(self.id, msg.seq, request, now)
        return [Submit(self._target)]

    def receive_binary(self, size: int) -> list[Action]:
        return [
            Reply(
                ErrorMessage(
                    ErrorCode.BINARY_UNEXPECTED,
                    f"binary message of {size} bytes not expected; send JSON text messages",
                )
            )
        ]

    def render_failed(self, job: Job) -> None:
        """The engine could not render `job`: the same request sent again must retry."""
        if self._target is job:
            self._target = None
