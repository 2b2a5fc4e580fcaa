"""The /ws endpoint: moves messages between a Starlette WebSocket and the runtime."""

from __future__ import annotations

import asyncio
import contextlib

from starlette.websockets import WebSocket, WebSocketDisconnect

from promptcast.core.messages import ErrorCode, ErrorMessage, serialise
from promptcast.runtime.runtime import Connection, EncodedFrame, Runtime, ServerFull
from promptcast.transport.webrtc import negotiate

# RFC 6455 close codes.
CLOSE_TRY_AGAIN_LATER = 1013


async def websocket_endpoint(websocket: WebSocket) -> None:
    runtime: Runtime = websocket.app.state.runtime
    await websocket.accept()
    if not runtime.ready:
        await _refuse(websocket, ErrorCode.NOT_READY, "the model is still loading; retry shortly")
        return
    try:
        conn = runtime.open_session()
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
            if isinstance(item, EncodedFrame):
                header, image = runtime.frame_message(item)
                await websocket.send_text(header)
                await websocket.send_bytes(image)
            else:
                await websocket.send_text(serialise(item))


async def _refuse(websocket: WebSocket, code: str, message: str) -> None:
    await websocket.send_text(serialise(ErrorMessage(code, message)))
    await websocket.close(CLOSE_TRY_AGAIN_LATER, reason=message[:120])
