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


def test_uvicorns_report_of_a_client_fault_becomes_one_info_line() -> None:
    import sys

    from promptcast.runtime.logs import ClientFaultFilter

    try:
        b"\xff".decode()
    except UnicodeDecodeError:
        exc_info = sys.exc_info()
    rec = logging.LogRecord("uvicorn.error", logging.ERROR, "x.py", 1,
                            "Invalid UTF-8 sequence received from client.", (), exc_info)
    assert ClientFaultFilter().filter(rec)
    assert rec.levelno == logging.INFO and rec.exc_info is None and "client's fault" in rec.getMessage()
    other = logging.LogRecord("uvicorn.error", logging.ERROR, "x.py", 1, "Exception in ASGI application",
                              (), exc_info)
    assert ClientFaultFilter().filter(other) and other.levelno == logging.ERROR and other.exc_info
