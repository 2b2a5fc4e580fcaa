"""Latest-wins delivery: one unsent frame per session.

A client that reads slowly (or a network that drains slowly) must never make frames pile
up: a newer frame replaces an unsent older one, and a frame older than one already sent is
never sent. Every drop is counted by reason in a counter the owner passes in, so one
counter can total the drops of all sessions.
"""

from __future__ import annotations

from collections import Counter
from typing import Generic, Protocol, TypeVar


class HasSeq(Protocol):
    @property
    def seq(self) -> int: ...

    @property
    def refined(self) -> bool: ...  # a refined frame of a seq comes after its first frame


F = TypeVar("F", bound=HasSeq)


def _order(frame: HasSeq) -> tuple[int, bool]:
    return frame.seq, frame.refined


class FrameDropReason:
    SUPERSEDED = "superseded_unsent"  # a newer frame arrived before this one was sent
    STALE = "stale"  # older than a frame already sent (finished out of order)
    SESSION_CLOSED = "session_closed"
    VIEWER_SKIPPED = "viewer_skipped"  # an MJPEG viewer never got it: it was still sending


class FrameSlot(Generic[F]):
    def __init__(self, dropped: Counter[str]) -> None:
        self._frame: F | None = None
        self._last_taken: tuple[int, bool] = (-1, False)
        self._dropped = dropped

    def put(self, frame: F) -> F | None:
        """Offer a frame. Returns the frame dropped because of it (it, or the one it replaced)."""
        if _order(frame) <= self._last_taken or (
            self._frame is not None and _order(frame) <= _order(self._frame)
        ):
            self._dropped[FrameDropReason.STALE] += 1
            return frame
        old, self._frame = self._frame, frame
        if old is not None:
            self._dropped[FrameDropReason.SUPERSEDED] += 1
        return old

    def take(self) -> F | None:
        """The frame to send now, if any; it leaves the slot."""
        frame, self._frame = self._frame, None
        if frame is not None:
            self._last_taken = _order(frame)
        return frame

    def close(self) -> None:
        if self._frame is not None:
            self._dropped[FrameDropReason.SESSION_CLOSED] += 1
            self._frame = None

    def __bool__(self) -> bool:
        return self._frame is not None
