"""Log lines that a client can cause are rate-limited, per call site.

A client that sends a thousand bad messages, or a device that fails every frame, must not turn
the log into a flood that hides everything else (or fills a disk over weeks). Each call site may
log `burst` lines per `per_s` seconds; past that its lines are dropped, and the next line that
gets through says how many were.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

# The loggers whose lines clients can cause: sessions, frames, signalling.
CLIENT_FACING = ("promptcast.runtime", "promptcast.transport")


class RateLimitFilter(logging.Filter):
    def __init__(self, burst: int = 10, per_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 loggers: tuple[str, ...] = CLIENT_FACING) -> None:
        super().__init__()
        self.loggers = loggers
        self.burst = burst
        self.per_s = per_s
        self.clock = clock
        self._windows: dict[tuple[str, int], tuple[float, int, int]] = {}  # site -> (start, logged, dropped)

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.loggers):
            return True  # start-up and shutdown lines are never dropped
        site = (record.pathname, record.lineno)
        now = self.clock()
        start, logged, dropped = self._windows.get(site, (now, 0, 0))
        if now - start >= self.per_s:
            start, logged = now, 0
        if logged >= self.burst:
            self._windows[site] = (start, logged, dropped + 1)
            return False
        if dropped:
            record.msg = f"{record.msg} ({dropped} more like this were not logged)"
        self._windows[site] = (start, logged + 1, 0)
        return True


# What uvicorn logs at error level, with a traceback, when a client breaks the protocol. The
# connection is closed with the right code; it is the client's fault, not the server's.
UVICORN_CLIENT_FAULTS = ("Invalid UTF-8 sequence received from client",)


class ClientFaultFilter(logging.Filter):
    """Turns uvicorn's error-with-traceback for a client's protocol fault into one info line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(UVICORN_CLIENT_FAULTS):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
            record.msg = f"{record.msg} (a client's fault; its connection was closed)"
        return True


def limit_rates(burst: int = 10, per_s: float = 60.0) -> None:
    """Rate-limit the client-facing loggers' lines on every root handler, and quieten uvicorn's
    reports of client faults. Call after logging.basicConfig and after uvicorn's own logging
    set-up (uvicorn.Config)."""
    rate_filter = RateLimitFilter(burst, per_s)
    for handler in logging.getLogger().handlers:
        handler.addFilter(rate_filter)
    logging.getLogger("uvicorn.error").addFilter(ClientFaultFilter())
