"""The exceptions the client raises. Everything derives from PromptcastError, so a plugin can
catch one class; the subclasses say whether retrying can help."""

from __future__ import annotations


class PromptcastError(Exception):
    """Base class of every error this package raises."""


class AuthError(PromptcastError):
    """The server refused the handshake (HTTP 401/403): a missing or wrong token, or an Origin the
    server does not allow. Retrying with the same settings cannot help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class ProtocolError(PromptcastError):
    """The server said something this client cannot follow: an unknown protocol version, a message
    that is not JSON, a frame header not followed by its image. Fatal for the client."""


class ServerError(PromptcastError):
    """An `error` message from the server (docs/protocol.md, "Server → client: error").

    `code` is the server's code (`out_of_range`, `stale_seq`, `bad_image`, `rate_limited`, ...);
    `seq` is the offending message's seq when the server could read one. The connection stays
    open: the client goes on after raising this.
    """

    def __init__(self, code: str, message: str, seq: int | None = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (seq {seq})" if seq is not None else ""))
        self.code = code
        self.message = message
        self.seq = seq


class ServerUnavailable(ServerError):
    """`not_ready` or `server_full` while connecting (the server closes with 1013): try later."""


class ConnectionLost(PromptcastError):
    """The connection closed and the client will not reconnect (reconnect=False, or close())."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
