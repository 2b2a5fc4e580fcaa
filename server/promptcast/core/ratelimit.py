"""Per-connection message rate: a token bucket, with time passed in.

A client may send `rate` messages a second on average and `burst` at once (a paste, a reconnect
replaying its state). Past that, each message is refused with a `rate_limited` error (at most one
error a second, so the answers cannot become a flood of their own); when the client keeps going
for another `burst` messages without ever waiting, it is abusing the server and the connection
is closed (1008, policy violation).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Verdict(Enum):
    ACCEPT = "accept"
    REFUSE = "refuse"  # drop the message; tell the client
    REFUSE_QUIETLY = "refuse_quietly"  # drop it; the client was told less than a second ago
    CLOSE = "close"  # the flood goes on: close the connection


@dataclass
class TokenBucket:
    rate: float  # messages per second, on average
    burst: int  # messages at once
    tokens: float = -1.0  # -1: full, set on first use
    last: float | None = None
    over: int = 0  # messages refused since the last accepted one
    told_at: float | None = None

    def take(self, now: float) -> Verdict:
        if self.last is None:
            self.tokens = float(self.burst)
        else:
            self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.over = 0
            return Verdict.ACCEPT
        self.over += 1
        if self.over > self.burst:
            return Verdict.CLOSE
        if self.told_at is not None and now - self.told_at < 1.0:
            return Verdict.REFUSE_QUIETLY
        self.told_at = now
        return Verdict.REFUSE
