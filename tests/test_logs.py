"""Rate-limited client-facing log lines, with a fake clock."""

from __future__ import annotations

import logging

from promptcast.runtime.logs import RateLimitFilter


def record(name: str, line: int, msg: str = "session %s: bad message") -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, "/x/runtime.py", line, msg, ("ab12",), None)


def test_a_call_site_logs_a_burst_then_says_how_many_it_dropped() -> None:
    now = [0.0]
    f = RateLimitFilter(burst=3, per_s=60, clock=lambda: now[0])
    passed = [f.filter(record("promptcast.runtime.runtime", 10)) for _ in range(10)]
    assert passed == [True] * 3 + [False] * 7
    assert f.filter(record("promptcast.runtime.runtime", 11))  # another call site has its own
    now[0] = 61.0
    again = record("promptcast.runtime.runtime", 10)
    assert f.filter(again)
    assert "(7 more like this were not logged)" in again.getMessage()
    assert again.getMessage().startswith("session ab12: bad message")


def test_other_loggers_are_never_dropped() -> None:
    f = RateLimitFilter(burst=1, per_s=60, clock=lambda: 0.0)
    assert all(f.filter(record("promptcast.engine.compile", 5)) for _ in range(50))
    assert all(f.filter(record("uvicorn.error", 5)) for _ in range(50))
