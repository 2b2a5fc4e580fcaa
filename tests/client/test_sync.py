"""SyncClient: the blocking wrapper, called from a thread as a plugin host would."""

from __future__ import annotations

import asyncio

from promptcast_client import Frame, SyncClient

from ..conftest import Server
from .helpers import SIZE, png


def plugin_session(url: str) -> tuple[Frame, Frame, Frame | None, str]:
    # The server runs on the test's event loop, so this runs in a thread: like a plugin's
    # UI thread, it has no event loop of its own.
    with SyncClient(url) as pc:
        assert pc.hello is not None and pc.state == "open"
        text_frame = pc.wait_for(pc.send_prompt("a yellow square", size=SIZE, seed=7), timeout=30)
        image_frame = pc.wait_for(pc.send_image(png((20, 20, 220))), timeout=30)
        polled = pc.poll_frame()  # nothing newer has arrived: None, without blocking
    return text_frame, image_frame, polled, pc.state


async def test_sync_client_sends_and_receives_from_a_thread(server: Server) -> None:
    text_frame, image_frame, polled, state = await asyncio.to_thread(plugin_session, server.ws_url)
    assert text_frame.seed == 7 and (text_frame.width, text_frame.height) == SIZE
    assert image_frame.seq > text_frame.seq
    assert polled is None
    assert state == "closed"
