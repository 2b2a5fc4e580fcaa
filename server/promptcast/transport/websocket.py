"""The /ws endpoint: moves messages between a Starlette WebSocket and the runtime."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect

from promptcast.core.access import SUBPROTOCOL, origin_ok, presented_token, token_ok
from promptcast.core.messages import ErrorCode, ErrorMessage, serialise
from promptcast.core.session import Close
from promptcast.core.viewers import CHANNEL_NAME_RULE, channel_name_ok
from promptcast.runtime.runtime import Connection, EncodedFrame, Runtime, ServerFull
from promptcast.transport.webrtc import negotiate

log = logging.getLogger(__name__)

# RFC 6455 close codes.
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TRY_AGAIN_LATER = 1013


async def websocket_endpoint(websocket: WebSocket) -> None:
    runtime: Runtime = websocket.app.state.runtime
    config = runtime.config
    # Checked before the upgrade, so a refused handshake is a plain HTTP error.
    headers = websocket.headers
    if not origin_ok(headers.get("origin"), headers.get("host"), config.allowed_origins):
        await _deny(websocket, f"origin {headers.get('origin')!r} is not allowed")
        return
    subprotocols = websocket.scope.get("subprotocols", [])
    if not token_ok(config.token, presented_token(headers, websocket.query_params, subprotocols)):
        await _deny(websocket, "no valid bearer token")
        return
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in subprotocols else None)
    # /ws?channel=NAME: this session's frames are also shown at /stream.mjpg?channel=NAME.
    channel = websocket.query_params.get("channel")
    if channel is not None and not channel_name_ok(channel):
        await _refuse(websocket, ErrorCode.OUT_OF_RANGE,
                      f"a channel name is {CHANNEL_NAME_RULE}", CLOSE_POLICY_VIOLATION)
        return
    if not runtime.ready:
        await _refuse(websocket, ErrorCode.NOT_READY, "the model is still loading; retry shortly")
        return
    try:
        conn = runtime.open_session(websocket.client.host if websocket.client else "", channel)
    except ServerFull as exc:
        await _refuse(websocket, ErrorCode.SERVER_FULL, str(exc))
        return
    ice_servers = websocket.app.state.ice_servers
    conn.start_webrtc = lambda sdp: runtime.spawn(negotiate(conn, sdp, ice_servers))
    sender = asyncio.create_task(_send_loop(websocket, runtime, conn))
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            if text is not None:
                runtime.on_text(conn, text)
            else:
                runtime.on_binary(conn, message.get("bytes") or b"")
    finally:
        runtime.close_session(conn)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
            await sender


async def _send_loop(websocket: WebSocket, runtime: Runtime, conn: Connection) -> None:
    # One sender per connection, so a frame's header and its image are never split by
    # another message.
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        while True:
            item = await conn.next_outgoing()
            if isinstance(item, Close):
                await websocket.close(item.code, reason=item.reason)
                return
            if isinstance(item, EncodedFrame):
                header, image = runtime.frame_message(item)
                await websocket.send_text(header)
                await websocket.send_bytes(image)
            else:
                await websocket.send_text(serialise(item))


async def _deny(websocket: WebSocket, message: str) -> None:
    # Closing before the accept answers the handshake with HTTP 403. (A denial response with
    # its own status and body would be nicer, but uvicorn's websockets-sansio protocol then logs
    # an error for every refused client; the reason goes to our log instead.)
    log.info("%s: handshake refused: %s", websocket.client.host if websocket.client else "?", message)
    await websocket.close()


async def _refuse(
    websocket: WebSocket, code: str, message: str, close_code: int = CLOSE_TRY_AGAIN_LATER
) -> None:
    await websocket.send_text(serialise(ErrorMessage(code, message)))
    await websocket.close(close_code, reason=message[:120])
