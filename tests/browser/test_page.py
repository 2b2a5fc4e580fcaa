"""The page at / in a real headless Chromium against a real server on 127.0.0.1 (WebRTC tests
only inside a loopback-only network namespace: see conftest.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from promptcast.bench import free_port
from promptcast.engine.pipeline import Engine

from ..conftest import run_server
from .conftest import needs_netns, open_page, type_and_wait


async def test_page_over_websocket_frames(engine: Engine, browser: Any) -> None:
    async with run_server(engine) as srv:
        page = await open_page(browser, srv.http_url + "/?transport=websocket")
        assert "promptcast-shapes" in await page.inner_text("#model")
        assert await page.eval_on_selector_all("#size option", "o => o.map(x => x.value)") == [
            "32x32", "64x64", "128x128"]
        final = await type_and_wait(page, "a red fox")
        assert await page.evaluate("window.promptcast.shownSeq") == final
        assert "WebSocket" in await page.inner_text("#transport")
        # The canvas holds the picture at the session's size.
        assert await page.evaluate("[canvas.width, canvas.height]") == [64, 64]
        await page.select_option("#size", "128x128")
        await page.wait_for_function("canvas.width === 128", timeout=20000)


async def test_page_passes_the_token_from_its_address(engine: Engine, browser: Any) -> None:
    async with run_server(engine, token="page-token_1") as srv:
        page = await open_page(browser, srv.http_url + "/?transport=websocket&token=page-token_1")
        final = await type_and_wait(page, "a cat")
        assert await page.evaluate("window.promptcast.shownSeq") == final
        # Without it the handshake is refused (401) and the page keeps trying, saying so.
        context = await browser.new_context()
        anonymous = await context.new_page()
        await anonymous.goto(srv.http_url + "/?transport=websocket")
        await anonymous.wait_for_function(
            "document.getElementById('status').dataset.state === 'reconnecting'", timeout=20000)


@needs_netns
async def test_webrtc_video_follows_typing(engine: Engine, browser: Any) -> None:
    async with run_server(engine, ice_hosts=("127.0.0.1",)) as srv:
        page = await open_page(browser, srv.http_url + "/")
        await page.wait_for_function("window.promptcast.transport === 'webrtc'", timeout=20000)
        final = await type_and_wait(page, "a lighthouse at night")
        decoded = await page.evaluate("video.getVideoPlaybackQuality().totalVideoFrames")
        assert decoded >= 1
        assert await page.evaluate("window.promptcast.shownSeq") == final
        latency = await page.inner_text("#latency")
        assert latency.isdigit() and int(latency) > 0


@needs_netns
async def test_two_clients_get_their_own_streams(engine: Engine, browser: Any) -> None:
    async with run_server(engine, ice_hosts=("127.0.0.1",)) as srv:
        a = await open_page(browser, srv.http_url + "/")
        b = await open_page(browser, srv.http_url + "/")
        for page in (a, b):
            await page.wait_for_function("window.promptcast.transport === 'webrtc'", timeout=20000)
        final_a = await type_and_wait(a, "a red fox")
        final_b = await type_and_wait(b, "a blue whale swimming")
        assert (final_a, final_b) == (9, 21)
        assert len(srv.runtime.connections) == 2
        peers = [c.video for c in srv.runtime.connections.values()]
        assert all(p is not None and p.active for p in peers) and peers[0] is not peers[1]


@needs_netns
async def test_webrtc_that_cannot_connect_falls_back_to_websocket_frames(
    engine: Engine, browser: Any
) -> None:
    # As if UDP were blocked: the page drops the server's ICE candidates from its answer.
    block_udp = """
      const Real = window.RTCPeerConnection;
      window.RTCPeerConnection = class extends Real {
        setRemoteDescription(desc) {
          const sdp = desc.sdp.split("\\r\\n").filter((l) => !l.startsWith("a=candidate")).join("\\r\\n");
          return super.setRemoteDescription({ type: desc.type, sdp });
        }
      };
    """
    async with run_server(engine, ice_hosts=("127.0.0.1",)) as srv:
        page = await open_page(browser, srv.http_url + "/", init_script=block_udp)
        await page.wait_for_function(
            "document.getElementById('transport').textContent.includes('WebSocket frames (')",
            timeout=20000)
        assert "did not connect" in await page.inner_text("#transport")
        await type_and_wait(page, "a fallback picture")
        assert await page.evaluate("window.promptcast.transport") == "websocket"


async def test_page_reconnects_after_a_server_restart(engine: Engine, browser: Any) -> None:
    port = free_port()
    async with run_server(engine, port=port) as srv:
        page = await open_page(browser, srv.http_url + "/?transport=websocket")
        await type_and_wait(page, "before")
    await page.wait_for_function(
        "document.getElementById('status').dataset.state === 'reconnecting'", timeout=20000)
    async with run_server(engine, port=port):
        await page.wait_for_function(
            "document.getElementById('status').dataset.state === 'connected'", timeout=30000)
        # The page re-sends the text as it stands, then typing goes on.
        final = await type_and_wait(page, "after the restart")
        assert await page.evaluate("window.promptcast.shownSeq") == final


async def test_an_idle_page_stays_closed_until_typing_resumes(engine: Engine, browser: Any) -> None:
    async with run_server(engine, idle_timeout_s=2.0) as srv:
        page = await open_page(browser, srv.http_url + "/?transport=websocket")
        await page.select_option("#size", "64x64")
        await type_and_wait(page, "a red fox")
        seed = await page.input_value("#seed")
        await page.wait_for_function(
            "document.getElementById('status').dataset.state === 'idle'", timeout=20000)
        # No reconnecting by itself: the session stays closed while nobody types.
        await asyncio.sleep(2.5)
        assert await page.evaluate("document.getElementById('status').dataset.state") == "idle"
        assert srv.runtime.connections == {}
        # Typing reopens it; the text as it stands is shown, with the same seed and size.
        final = await type_and_wait(page, "a red fox asleep")
        assert await page.evaluate("window.promptcast.shownSeq") >= final
        assert await page.evaluate("document.getElementById('status').dataset.state") == "connected"
        assert await page.input_value("#seed") == seed
        assert await page.evaluate("[canvas.width, canvas.height]") == [64, 64]


@needs_netns
async def test_an_idle_close_keeps_the_video_picture_on_the_canvas(engine: Engine, browser: Any) -> None:
    # Long enough for the video to connect (the offer is the last message before typing).
    async with run_server(engine, idle_timeout_s=5.0, ice_hosts=("127.0.0.1",)) as srv:
        page = await open_page(browser, srv.http_url + "/")
        await page.wait_for_function("window.promptcast.transport === 'webrtc'", timeout=20000)
        await type_and_wait(page, "a lighthouse")
        size = await page.evaluate("[video.videoWidth, video.videoHeight]")
        await page.wait_for_function(
            "document.getElementById('status').dataset.state === 'idle'", timeout=20000)
        assert await page.evaluate("window.promptcast.transport") == "websocket"
        assert await page.evaluate("[canvas.width, canvas.height, canvas.hidden]") == [*size, False]
        # A pixel of the picture, not the canvas' empty black.
        pixel = await page.evaluate("Array.from(canvas.getContext('2d').getImageData("
                                    "canvas.width >> 1, canvas.height >> 1, 1, 1).data)")
        assert pixel[3] == 255 and sum(pixel[:3]) > 0


RECORD_PEER_CONFIGS = """
window.peerConfigs = [];
const Native = window.RTCPeerConnection;
window.RTCPeerConnection = function (config) {
  window.peerConfigs.push(JSON.parse(JSON.stringify(config)));
  return new Native(config);
};
"""


@needs_netns
async def test_the_page_uses_the_servers_ice_servers(engine: Engine, browser: Any) -> None:
    # Behind NAT the page needs the same STUN/TURN servers as the server (hello carries them).
    stun = f"stun:127.0.0.1:{free_port()}"  # nothing listens: only the configuration matters
    async with run_server(engine, ice_servers=(stun,), ice_hosts=("127.0.0.1",)) as srv:
        page = await open_page(browser, srv.http_url + "/", init_script=RECORD_PEER_CONFIGS)
        await page.wait_for_function("window.peerConfigs.length > 0", timeout=20000)
        assert await page.evaluate("window.peerConfigs[0].iceServers") == [{"urls": stun}]
