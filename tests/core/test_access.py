"""Token and Origin rules, and the per-connection rate limit: pure, no sockets."""

from __future__ import annotations

import pytest

from promptcast.core.access import is_loopback, origin_ok, presented_token, token_ok
from promptcast.core.ratelimit import TokenBucket, Verdict


def test_token_comes_from_the_header_a_subprotocol_or_the_query() -> None:
    assert presented_token({"authorization": "Bearer s3cret"}, {}, []) == "s3cret"
    assert presented_token({"authorization": "bearer  s3cret "}, {}, []) == "s3cret"
    assert presented_token({}, {}, ["promptcast", "bearer.s3cret"]) == "s3cret"
    assert presented_token({}, {"token": "s3cret"}, []) == "s3cret"
    assert presented_token({"authorization": "Basic dXNlcg=="}, {}, ["promptcast"]) is None
    assert presented_token({}, {"token": ""}, []) is None


def test_token_check() -> None:
    assert token_ok(None, None) and token_ok(None, "anything")  # no token configured
    assert token_ok("s3cret", "s3cret")
    assert not token_ok("s3cret", None)
    assert not token_ok("s3cret", "s3cre")
    assert not token_ok("s3cret", "s3cret ")


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "ok"),
    [
        (None, "127.0.0.1:8000", (), True),  # not a browser
        ("http://127.0.0.1:8000", "127.0.0.1:8000", (), True),  # the server's own page
        ("HTTP://127.0.0.1:8000", "127.0.0.1:8000", (), True),
        ("https://studio.example", "studio.example", (), True),  # behind a TLS proxy
        ("https://studio.example:443", "studio.example", (), True),
        ("http://evil.example", "127.0.0.1:8000", (), False),  # cross-site hijacking
        ("http://127.0.0.1:9999", "127.0.0.1:8000", (), False),  # another port is another origin
        ("null", "127.0.0.1:8000", (), False),  # sandboxed iframe, file: page
        ("http://127.0.0.1:8000", None, (), False),
        ("https://studio.example", "10.0.0.5:8000", ("https://studio.example",), True),
        ("https://studio.example:443", "10.0.0.5:8000", ("https://STUDIO.example",), True),
        ("http://10.0.0.5:8000", "10.0.0.5:8000", ("https://studio.example",), False),
        ("http://evil.example", "127.0.0.1:8000", ("*",), True),
        ("javascript:alert(1)", "127.0.0.1:8000", (), False),
        ("http://[::1]:8000", "[::1]:8000", (), True),
    ],
)
def test_origin_allowlist(origin: str | None, host: str | None, allowed: tuple[str, ...],
                          ok: bool) -> None:
    assert origin_ok(origin, host, allowed) is ok


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("::")


def test_rate_limit_refuses_then_closes_a_flood_and_forgives_a_pause() -> None:
    bucket = TokenBucket(rate=10, burst=5)
    t = 0.0
    assert [bucket.take(t) for _ in range(5)] == [Verdict.ACCEPT] * 5  # a burst is fine
    assert bucket.take(t) is Verdict.REFUSE  # told once...
    assert bucket.take(t) is Verdict.REFUSE_QUIETLY  # ...then quietly, for a second
    t += 0.25  # 2.5 tokens come back: accepted again, and the episode ends
    assert bucket.take(t) is Verdict.ACCEPT and bucket.take(t) is Verdict.ACCEPT
    # A flood that never waits: refused, then closed once it runs a burst past the limit.
    verdicts = [bucket.take(t) for _ in range(6)]  # the 6th is one burst (5) past the limit
    assert verdicts[0] is Verdict.REFUSE_QUIETLY  # still within a second of the last notice
    assert verdicts[-1] is Verdict.CLOSE and Verdict.CLOSE not in verdicts[:-1]
    t += 10  # a client that slows down is served again
    assert bucket.take(t) is Verdict.ACCEPT


def test_steady_typing_at_the_rate_is_never_refused() -> None:
    bucket = TokenBucket(rate=50, burst=100)
    assert all(bucket.take(i / 50) is Verdict.ACCEPT for i in range(5000))  # 100 s at 50 Hz
