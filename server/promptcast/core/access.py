"""Who may open a session: the bearer token and the Origin allowlist. Pure functions of what the
handshake carried, so the transport only asks and the rules are tested without sockets.

Browsers cannot set an Authorization header on a WebSocket, so a token may come three ways:
- `Authorization: Bearer TOKEN` (plugins, the SDK, curl);
- the WebSocket subprotocol list, as `["promptcast", "bearer.TOKEN"]` (the server selects
  "promptcast" and never echoes the token);
- the query string, `/ws?token=TOKEN` (simplest; but URLs end up in logs and history).

The Origin check stops cross-site WebSocket hijacking: a page on another site, opened in a
browser on the same network, could otherwise drive the server with the visitor's reach. Browsers
always send Origin; a request without one is not from a browser page and passes.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

SUBPROTOCOL = "promptcast"
TOKEN_SUBPROTOCOL_PREFIX = "bearer."


def presented_token(
    headers: Mapping[str, str], query: Mapping[str, str], subprotocols: Sequence[str]
) -> str | None:
    """The token the client presented, from whichever of the three places it used."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    for proto in subprotocols:
        if proto.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return proto.removeprefix(TOKEN_SUBPROTOCOL_PREFIX)
    return query.get("token") or None


def token_ok(expected: str | None, presented: str | None) -> bool:
    """No token configured: everyone may. Otherwise a constant-time comparison."""
    if expected is None:
        return True
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


def origin_ok(origin: str | None, host: str | None, allowed: Sequence[str]) -> bool:
    """Whether a handshake from `origin` may proceed.

    `allowed` holds origins like "https://studio.example:8443", or "*" for any. Empty: only the
    server's own origin, i.e. an Origin whose host:port is the Host the request was sent to.
    """
    if origin is None:
        return True  # not a browser page
    if "*" in allowed:
        return True
    normalised = _normalise(origin)
    if normalised is None:
        return False  # "null" (sandboxed iframes, file: pages) or garbage
    if allowed:
        return normalised in {_normalise(a) for a in allowed}
    if host is None:
        return False
    # Either scheme: behind a TLS-terminating proxy the page is https and this server sees http.
    return normalised in {_normalise(f"{scheme}://{host}") for scheme in ("http", "https")}


def _normalise(origin: str) -> str | None:
    """scheme://host:port, lower-case, with the default port written out."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
