"""uvicorn's WebSocket protocol, dropping a peer that answers no ping even when it stopped
reading.

uvicorn pings every `--ws-ping-interval` and, when no pong comes within `--ws-ping-timeout`,
queues a close frame and closes the transport, which first waits for its write buffer to drain.
A peer that stopped reading but keeps its TCP connection open (a frozen tab, a hung plugin: its
TCP stack still acknowledges, with a zero window) never drains it once frames have filled the
socket: the connection is never lost, the app's receive() never returns, and the session keeps
its place under `--max-sessions` and the per-address limit for ever. (The idle timeout cannot
help: its close frame waits behind the frames too.) Such a peer is gone for our purposes: what
it has not read is dropped and the connection aborted, which tells the app at once.

Built on uvicorn's websockets-sansio protocol, which uvicorn's "auto" picks with websockets
installed, chosen explicitly as transport/http.py chooses h11.
"""

from __future__ import annotations

import logging

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

log = logging.getLogger(__name__)


class KeepaliveProtocol(WebSocketsSansIOProtocol):
    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()  # the close frame, and a close that waits for the buffer
        stuck = self.transport.get_write_buffer_size()
        if stuck:
            log.info("%s: dropping a WebSocket peer that answers no ping and has not read "
                     "%d bytes", self.client[0] if self.client else "?", stuck)
            self.transport.abort()  # connection_lost() tells the app
