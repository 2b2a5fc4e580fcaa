"""GET /stream.mjpg: frames as MJPEG over HTTP (multipart/x-mixed-replace), for OBS, VJ tools
and <img> tags, which show it without WebRTC or a WebSocket.

`?session=ID` shows one session's frames (ID is what its hello says), `?channel=NAME` a
channel's (every session that connected as /ws?channel=NAME). Which frames a viewer gets, and
the cap on viewers, are decided in core.viewers and the runtime; this adapter only checks the
token, translates refusals to HTTP statuses and writes the parts.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Mapping

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from promptcast.core.access import presented_token, token_ok
from promptcast.core.viewers import FeedKey, Kind, Refusal
from promptcast.runtime.runtime import FeedViewer, Runtime

log = logging.getLogger(__name__)

BOUNDARY = "promptcastframe"
# With no new frame for this long, the last one is sent again: a screen that connected during
# a pause gets a second chance at the picture, and a write keeps going to a viewer that stopped
# reading, so that its writes pause and the HTTP protocol's write timeout (transport/http.py)
# closes it, freeing its place under the cap.
REPEAT_AFTER_S = 1.0

_STATUS = {
    Refusal.NOT_FOUND: (404, "no such session or channel"),
    Refusal.FULL: (503, "the server is at its limit of MJPEG viewers; retry later"),
    Refusal.DRAINING: (503, "the server is shutting down"),
}


async def mjpeg_endpoint(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    query = request.query_params
    # The same token rules as /ws: bearer header or ?token= (an <img> or OBS can only set a URL).
    if not token_ok(runtime.config.token, presented_token(request.headers, query, ())):
        return JSONResponse({"error": "a valid token is required"}, 403)
    session, channel = query.get("session"), query.get("channel")
    if (session is None) == (channel is None):
        return JSONResponse({"error": "give exactly one of ?session=ID and ?channel=NAME"}, 400)
    key: FeedKey = (Kind.SESSION, session) if session is not None else (Kind.CHANNEL, channel or "")
    viewer = runtime.open_viewer(key)
    if isinstance(viewer, Refusal):
        status, message = _STATUS[viewer]
        headers = {"Retry-After": "5"} if status == 503 else None
        return JSONResponse({"error": message}, status, headers=headers)
    media_type = f"multipart/x-mixed-replace; boundary={BOUNDARY}"
    headers = {
        "Cache-Control": "no-cache, no-store, must-revalidate",
        "Pragma": "no-cache",
        "X-Accel-Buffering": "no",  # nginx: pass parts on as they come
    }
    if request.method == "HEAD":
        # The stream's head alone (Starlette routes HEAD here too): a stream that never ends
        # and writes nothing would hold a viewer place, and the connection, until the client
        # gave up.
        viewer.close()
        return Response(media_type=media_type, headers=headers)
    log.info("%s: MJPEG viewer of %s %s", request.client.host if request.client else "?", *key)
    return _MjpegResponse(viewer, media_type=media_type, headers=headers)


class _MjpegResponse(StreamingResponse):
    """A StreamingResponse that frees its viewer's place however the stream ends: the client
    left (Starlette cancels the response, possibly while a write is pending, when the body
    generator's own `finally` would only run at garbage collection), the session closed, or the
    server is shutting down (next_frame says None)."""

    def __init__(self, viewer: FeedViewer, media_type: str, headers: Mapping[str, str]) -> None:
        self._body = _parts(viewer)
        self._viewer = viewer
        super().__init__(self._body, media_type=media_type, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._viewer.close()
            await self._body.aclose()


async def _parts(viewer: FeedViewer) -> AsyncGenerator[bytes, None]:
    """The multipart body. Each part ends with the next boundary line, not just before the next
    part: browsers show a part once they see the boundary after it, so a picture appears when
    it arrives rather than one frame late."""
    yield f"--{BOUNDARY}\r\n".encode()
    while True:
        frame = await viewer.next_frame(REPEAT_AFTER_S)
        if frame is None:
            return
        # One write per part: a slow viewer waits in this write while newer frames replace
        # each other in its feed, so it gets the newest next, never a backlog.
        yield b"".join((
            f"Content-Type: image/jpeg\r\nContent-Length: {len(frame.jpeg)}\r\n"
            f"X-Promptcast-Seq: {frame.seq}\r\n\r\n".encode(),
            frame.jpeg,
            f"\r\n--{BOUNDARY}\r\n".encode(),
        ))
