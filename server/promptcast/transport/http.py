"""uvicorn's HTTP protocol with a deadline for requests to arrive, and one for responses to
be read.

uvicorn has no timeout for the head of a request (its keep-alive timer runs only between
requests, and the next request's first byte cancels it), so a client that opens connections and
sends a header line now and then, never finishing (slowloris), holds each connection for ever.
The same goes for a body sent a byte at a time. Here a request, its head and any body, must
arrive within `header_timeout_s`, counted from the connection's opening (for its first request)
or from the first byte of a later request on a kept-alive connection; past it the connection is
closed. No route of this server takes a request body, so a real client's request is a few
hundred bytes sent at once.

Responses have the opposite problem: uvicorn writes a response only as fast as the client
reads it, with no limit, and an MJPEG stream never ends. A viewer that stays connected but
stops reading (its TCP stack still acknowledges, with a zero window) held its place under
`--max-mjpeg-viewers` for ever, and a graceful shutdown waited for it. Here a connection whose
writes have been paused (uvicorn's buffer full) for `write_timeout_s` is aborted, which ends
the response as if the client had left.

Built on uvicorn's h11 protocol, chosen explicitly rather than uvicorn's "auto" (which prefers
httptools when it is installed): h11 is a dependency of uvicorn itself, so the server behaves
the same, and is tested the same, wherever it runs; httptools' faster parsing does not matter
for the few HTTP requests this server answers (the page, health, metrics, WebSocket handshakes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

# Sent when part of a request had arrived, so a slow but real client learns why it was cut off.
# (h11 cannot send a response before it has parsed a request, hence the raw bytes.)
REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's H11Protocol, closing connections whose request is late, or whose client has
    stopped reading a response. Subclass it with `http_protocol()`, which sets the timeout."""

    header_timeout_s: float = 10.0  # 0: no deadline
    # A response's writes paused this long (nothing read meanwhile): the client is gone. Long
    # enough for a real viewer on a slow link, whose reading resumes them every frame.
    write_timeout_s: float = 20.0
    _write_timer: asyncio.TimerHandle | None = None
    # Called when the server begins a graceful shutdown (SIGTERM, or should_exit), before it
    # waits for responses in flight: endless ones (MJPEG streams) must be told to end.
    on_shutdown: Callable[[], None] | None = None
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that sends nothing at all is held just as long as a half-sent head.
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._owes_request():
            # A later request on a kept-alive connection: its deadline runs from its first byte
            # (uvicorn's keep-alive timer, cancelled by that byte, covered the wait before it).
            self._arm_head_timer()
        else:
            self._cancel_head_timer()

    def shutdown(self) -> None:
        if self.on_shutdown is not None:
            self.on_shutdown()
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_write_timer()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None and self.write_timeout_s > 0:
            self._write_timer = self.loop.call_later(self.write_timeout_s, self._write_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_write_timer()

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_timed_out(self) -> None:
        self._write_timer = None
        log.info("%s: closing an HTTP connection whose client has read nothing for %g s",
                 self.client[0] if self.client else "?", self.write_timeout_s)
        # Not close(): that waits for the buffer to drain, which a client that does not read
        # never lets happen. connection_lost() then tells the response it is over.
        self.transport.abort()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # The WebSocket protocol takes the connection over (its own pings guard it from here);
        # this protocol hears nothing more about it, not even its loss.
        self._cancel_head_timer()
        super().handle_websocket_upgrade(event)

    def _owes_request(self) -> bool:
        """True while the client owes (part of) a request: h11 has not parsed its head yet in
        this request/response cycle, or its body is still coming. (A pipelined head that
        arrives while a response is being written leaves the client DONE; uvicorn's keep-alive
        timer, armed after that response, covers it.) False once the connection is closing or
        has become a WebSocket, whose handshake request stays "in its body" for h11."""
        return (
            self.conn.their_state in (h11.IDLE, h11.SEND_BODY)
            and not self.transport.is_closing()
            and self.transport.get_protocol() is self
        )

    def _arm_head_timer(self) -> None:
        if self._head_timer is None and self.header_timeout_s > 0:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._owes_request():
            return
        partial, _ = self.conn.trailing_data
        log.info("%s: closing an HTTP connection: no complete request after %g s",
                 self.client[0] if self.client else "?", self.header_timeout_s)
        if partial and self.conn.our_state is h11.IDLE:  # nothing answered yet
            self.transport.write(REQUEST_TIMEOUT)
        # connection_lost() then tells h11 and, if a request had started, the app.
        self.transport.close()


def http_protocol(
    header_timeout_s: float, on_shutdown: Callable[[], None] | None = None
) -> type[HeaderTimeoutProtocol]:
    """The protocol class to give uvicorn.Config(http=...): request heads must arrive within
    `header_timeout_s` seconds (0: no limit); `on_shutdown` (idempotent) is called when a
    graceful shutdown begins, once per open HTTP connection."""

    class Configured(HeaderTimeoutProtocol):
        pass

    Configured.header_timeout_s = max(0.0, header_timeout_s)
    # staticmethod: a plain function stored on the class would otherwise be bound to `self`.
    Configured.on_shutdown = staticmethod(on_shutdown) if on_shutdown else None
    return Configured
