"""WebRTC video: signalling over /ws, a real aiortc peer as the client, on 127.0.0.1 only.

Both peers live in this process and offer only 127.0.0.1 as host candidate (--ice-host), and
no STUN/TURN server is configured, so no packet leaves the loopback interface.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from promptcast.config import EngineConfig
from promptcast.core.limits import Limits
from promptcast.core.scheduler import RenderRequest
from promptcast.core.session import Session
from promptcast.engine.image import decode_image
from promptcast.engine.pipeline import Engine
from promptcast.runtime.runtime import Connection, Describe
from promptcast.transport import webrtc
from promptcast.transport.webrtc import MIN_PTS_GAP, LatestFrameTrack

from ..conftest import connect, http_get, recv_json, run_server


async def open_video(ws: Any) -> tuple[RTCPeerConnection, Any, list[dict[str, Any]]]:
    """Offer to receive video plus a data channel; returns the peer, its track, and the frame
    metadata received so far (filled in as it arrives)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channel = pc.createDataChannel("frames")
    metas: list[dict[str, Any]] = []
    channel.on("message", lambda raw: metas.append(json.loads(raw)))
    pc.addTransceiver("video", direction="recvonly")
    track: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    pc.on("track", lambda t: track.done() or track.set_result(t))
    await pc.setLocalDescription(await pc.createOffer())
    await ws.send(json.dumps({"type": "webrtc_offer", "sdp": pc.localDescription.sdp}))
    answer = await recv_json(ws)
    assert answer["type"] == "webrtc_answer", answer
    assert "127.0.0.1" in answer["sdp"]
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    state = await recv_json(ws, timeout=20)
    assert state == {"type": "video", "transport": "webrtc", "reason": ""}
    return pc, await asyncio.wait_for(track, 10), metas


async def meta_of(metas: list[dict[str, Any]], seq: int | None = None, timeout: float = 10
                  ) -> dict[str, Any]:
    """The metadata of the video frame showing `seq` (None: the first frame's), once it came."""
    async with asyncio.timeout(timeout):
        while True:
            found = [m for m in metas if seq is None or m["seq"] == seq]
            if found:
                return found[0]
            await asyncio.sleep(0.05)


LIMITS = Limits(sizes=((64, 64),), default_size=(64, 64), steps=(1,), default_steps=1)


def prompt(seq: int, text: str) -> str:
    return json.dumps({"type": "prompt", "seq": seq, "text": text, "width": 64, "height": 64})


async def jpeg_of(ws: Any, seq: int, text: str) -> bytes:
    """Send prompt `seq` before video is on: its frame comes over the WebSocket, as a JPEG."""
    await ws.send(prompt(seq, text))
    header = await recv_json(ws)
    assert (header["seq"], header["format"]) == (seq, "jpeg")
    jpeg: bytes = await ws.recv()
    return jpeg


def described(seq: int) -> Describe:
    return lambda: {"seq": seq}


async def test_frames_at_the_same_instant_get_pts_far_enough_apart(monkeypatch: Any) -> None:
    # Browsers report a shown frame's RTP timestamp a tick off now and then; the page matches
    # within a few ticks, so pts must never be closer than MIN_PTS_GAP, however fast frames come.
    monkeypatch.setattr(webrtc.time, "monotonic", lambda: 1000.0)
    sent: list[dict[str, Any]] = []
    track = LatestFrameTrack(sent.append)
    pixels = np.zeros((16, 16, 3), np.uint8)
    for seq in range(3):
        track.offer(pixels, described(seq))
        await track.recv()
    assert [m["seq"] for m in sent] == [0, 1, 2]
    assert [m["pts"] for m in sent] == [0, MIN_PTS_GAP, 2 * MIN_PTS_GAP]


async def test_a_first_frame_never_replaces_a_frame_the_track_has_had() -> None:
    sent: list[dict[str, Any]] = []
    track = LatestFrameTrack(sent.append)
    pixels = np.zeros((16, 16, 3), np.uint8)
    assert not track.offer(pixels, described(1), first=True)  # nothing yet: taken
    assert track.offer(pixels, described(3))  # replaces 1, never sent
    track.offer(pixels, described(2), first=True)  # the picture before video, decoded late: not
    await track.recv()
    track.offer(pixels, described(2), first=True)  # nor once a frame was sent
    await track.recv()  # (the last one again, after REPEAT_AFTER_S)
    assert [m["seq"] for m in sent] == [3, 3]


async def test_a_frame_is_described_once_when_sent_and_never_if_replaced() -> None:
    # Describing a frame is what counts it as sent (its header, its keystroke latency): a frame
    # the track replaced before sending it was not sent, and a repeat is not a new frame.
    described_seqs: list[int] = []

    def counted(seq: int) -> Describe:
        return lambda: described_seqs.append(seq) or {"seq": seq}

    track = LatestFrameTrack(lambda _meta: None)
    pixels = np.zeros((16, 16, 3), np.uint8)
    assert not track.offer(pixels, counted(1))
    assert track.offer(pixels, counted(2))
    await track.recv()
    await track.recv()  # a repeat, after REPEAT_AFTER_S
    assert described_seqs == [2]


async def test_frames_arrive_as_video_with_their_seq(engine: Engine) -> None:
    async with run_server(engine, ice_hosts=("127.0.0.1",)) as srv:
        ws, _ = await connect(srv.ws_url)
        pc, track, metas = await open_video(ws)
        for seq, text in enumerate(["a", "a r", "a re", "a red"], start=1):
            await ws.send(prompt(seq, text))
        frame = await asyncio.wait_for(track.recv(), 20)
        assert (frame.width, frame.height) == (64, 64)
        last = await meta_of(metas, 4)
        assert last["type"] == "frame" and last["format"] == "video" and last["pts"] >= 0
        assert last["timings"]["total_ms"] > 0
        assert [m["seq"] for m in metas] == sorted(m["seq"] for m in metas)
        # No JPEG frames on the WebSocket while video flows.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.5)
        await pc.close()
        # The peer went away: frames come over the WebSocket again.
        state = await recv_json(ws, timeout=20)
        assert state["type"] == "video" and state["transport"] == "websocket"
        await ws.send(prompt(5, "a red fox"))
        header = await recv_json(ws)
        assert header["type"] == "frame" and header["format"] == "jpeg"
        await ws.close()


async def test_video_starts_with_the_picture_the_websocket_showed(engine: Engine) -> None:
    # A page that reconnects (a kiosk after an idle timeout or a server restart) sends its
    # prompt and its offer at once: the frame comes over the WebSocket while the peer connects.
    # Once video carries the frames, the page shows the video: its first frame must be that
    # picture, not nothing until somebody types.
    async with run_server(engine, ice_hosts=("127.0.0.1",)) as srv:
        ws, _ = await connect(srv.ws_url)
        jpeg = await jpeg_of(ws, 1, "a yellow square")
        pc, track, metas = await open_video(ws)
        frame = await asyncio.wait_for(track.recv(), 10)
        await meta_of(metas)
        assert [(m["seq"], m["format"]) for m in metas[:1]] == [(1, "video")]
        want = decode_image(jpeg, 64, 64)
        diff = np.abs(frame.to_ndarray(format="rgb24").astype(int) - want.astype(int)).mean()
        assert diff < 8, diff
        # It is not counted as a frame sent again, nor its age as a keystroke's latency.
        metrics = (await http_get(srv.http_url + "/metrics"))[1]
        assert "promptcast_frames_sent_total 1.0" in metrics
        await pc.close()
        await ws.close()


async def test_a_new_video_never_starts_with_a_picture_older_than_the_last_video_frame(
    engine: Engine,
) -> None:
    async with run_server(engine, ice_hosts=("127.0.0.1",)) as srv:
        ws, _ = await connect(srv.ws_url)
        await jpeg_of(ws, 1, "a yellow square")
        pc, track, metas = await open_video(ws)
        await asyncio.wait_for(track.recv(), 10)  # seq 1, shown again
        await ws.send(prompt(2, "a green square"))
        await meta_of(metas, 2)
        await pc.close()  # the link drops: frames come over the WebSocket again
        assert (await recv_json(ws, timeout=20))["transport"] == "websocket"
        pc, track, metas = await open_video(ws)  # and video comes back, nobody typing meanwhile
        with pytest.raises(TimeoutError):  # not seq 1's picture: the video showed 2 since
            await asyncio.wait_for(track.recv(), 2)
        await ws.send(prompt(3, "a blue square"))
        await asyncio.wait_for(track.recv(), 10)
        await pc.close()
        await ws.close()


async def test_an_engine_that_encodes_jpegs_skips_the_frames_that_go_to_video(
    device_jpeg_engine: Engine,
) -> None:
    async with run_server(device_jpeg_engine, ice_hosts=("127.0.0.1",)) as srv:
        ws, _ = await connect(srv.ws_url)
        await jpeg_of(ws, 1, "a green square before video")
        pc, track, metas = await open_video(ws)
        await ws.send(prompt(2, "a green square on video"))
        await asyncio.wait_for(track.recv(), 20)
        await meta_of(metas, 2)
        await pc.close()
        await ws.close()
    asked = dict(device_jpeg_engine.asked)  # type: ignore[attr-defined]
    assert asked["a green square before video"] is True
    assert asked["a green square on video"] is False


@pytest.fixture(scope="module")
def video_engine() -> Engine:
    """The embedded model with `--video-convert device`: the engine makes the I420 planes of
    frames bound for video (as on a GPU; here, on the CPU, in the engine's thread)."""
    eng = Engine(EngineConfig(video_convert="device"))
    eng.load()
    eng.warm_up()
    assert eng.converts_video
    return eng


@pytest.mark.parametrize("device_planes", [True, False])
async def test_video_shows_the_rendered_picture_from_either_conversion(
    engine: Engine, video_engine: Engine, device_planes: bool, monkeypatch: Any,
) -> None:
    eng = video_engine if device_planes else engine
    planes_given: list[bool] = []
    convert = webrtc.video_frame
    monkeypatch.setattr(webrtc, "video_frame",
                        lambda pixels, yuv: planes_given.append(yuv is not None) or convert(pixels, yuv))
    async with run_server(eng, ice_hosts=("127.0.0.1",)) as srv:
        ws, _ = await connect(srv.ws_url)
        pc, track, metas = await open_video(ws)
        await ws.send(json.dumps({"type": "prompt", "seq": 1, "text": "a blue circle", "seed": 7,
                                  "width": 64, "height": 64}))
        frame = await asyncio.wait_for(track.recv(), 20)  # the only picture rendered
        await meta_of(metas)
        await pc.close()
        await ws.close()
    assert planes_given and set(planes_given) == {device_planes}
    [meta] = metas[:1]
    want = eng.render(RenderRequest("a blue circle", meta["seed"], meta["steps"], 64, 64)).pixels
    got = frame.to_ndarray(format="rgb24")
    diff = np.abs(got.astype(int) - want.astype(int)).mean(axis=(0, 1))  # per colour channel
    print("mean difference per channel", diff)
    assert (diff < 8).all(), diff  # VP8 at 64 px loses detail, not colour


async def test_closing_the_socket_frees_the_peer(engine: Engine) -> None:
    async with run_server(engine, ice_hosts=("127.0.0.1",)) as srv:
        ws, _ = await connect(srv.ws_url)
        pc, _, _ = await open_video(ws)
        conn = next(iter(srv.runtime.connections.values()))
        peer = conn.video
        assert peer is not None and peer.active
        assert "promptcast_webrtc_peers 1.0" in (await http_get(srv.http_url + "/metrics"))[1]
        await ws.close()
        for _ in range(100):
            if peer.pc.connectionState == "closed":
                break
            await asyncio.sleep(0.05)
        assert peer.pc.connectionState == "closed"
        assert "promptcast_webrtc_peers 0.0" in (await http_get(srv.http_url + "/metrics"))[1]
        await pc.close()


async def test_a_bad_offer_is_an_error_not_a_crash(engine: Engine) -> None:
    async with run_server(engine, ice_hosts=("127.0.0.1",)) as srv:
        ws, _ = await connect(srv.ws_url)
        await ws.send(json.dumps({"type": "webrtc_offer", "sdp": "v=0 nonsense"}))
        err = await recv_json(ws)
        assert err["type"] == "error" and err["code"] == "webrtc_failed"
        await ws.send(prompt(1, "still fine"))
        assert (await recv_json(ws))["type"] == "frame"
        await ws.close()


@pytest.mark.parametrize("offers", [2, 3])
async def test_offers_at_once_are_answered_newest_only_and_leave_no_peer_behind(
    offers: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A page's retry or a plugin's second offer: each offer's negotiation runs as its own task.
    # An earlier one whose peer a later one closed mid-answer cleared the session's peer (the
    # later one's) and reported an error; the peer that was answered then belonged to nobody.
    webrtc.use_ice_host_addresses(["127.0.0.1"])
    made: list[webrtc.WebRTCPeer] = []
    real_init = webrtc.WebRTCPeer.__init__

    def recorded(self: webrtc.WebRTCPeer, *args: Any) -> None:
        real_init(self, *args)
        made.append(self)

    monkeypatch.setattr(webrtc.WebRTCPeer, "__init__", recorded)
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    client.addTransceiver("video", direction="recvonly")
    await client.setLocalDescription(await client.createOffer())
    conn = Connection(Session("s", LIMITS, seed=1), Counter())
    await asyncio.gather(*[webrtc.negotiate(conn, client.localDescription.sdp, [])
                           for _ in range(offers)])
    sent = list(conn.control)
    assert [type(m).__name__ for m in sent] == ["WebRTCAnswer"], sent
    assert conn.video is not None and [p for p in made if not p._closed] == [conn.video]
    await conn.video.close()
    await client.close()


async def send_offer(ws: Any) -> RTCPeerConnection:
    """Offer to receive video; the caller reads the answer (or error) itself."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    await ws.send(json.dumps({"type": "webrtc_offer", "sdp": pc.localDescription.sdp}))
    return pc


async def test_a_spoofed_udp_flood_at_an_ice_port_stays_bounded(engine: Engine) -> None:
    import re
    import socket

    from promptcast.transport.webrtc import MAX_QUEUED_DATAGRAMS

    async with run_server(engine, ice_hosts=("127.0.0.1",)) as srv:
        ws, _ = await connect(srv.ws_url)
        pc = await send_offer(ws)
        answer = await recv_json(ws)
        # The client never completes ICE: the server's port just receives garbage, as from an
        # attacker who read the candidate. Only ever sent to 127.0.0.1.
        port = int(re.search(r"a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 (\d+) typ host",
                             answer["sdp"]).group(1))  # type: ignore[union-attr]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(5000):
            sock.sendto(b"\x17\xfe\xfd" + b"\x00" * 1000, ("127.0.0.1", port))  # not STUN
            if i % 50 == 0:  # the server shares this event loop: let it read as they come
                await asyncio.sleep(0.001)
        sock.close()
        peer = next(iter(srv.runtime.connections.values())).video
        ice = peer.pc.getTransceivers()[0].receiver.transport.transport._connection
        for _ in range(50):  # let the loop read what the kernel buffered
            await asyncio.sleep(0.02)
        assert 0 < ice._queue.qsize() <= MAX_QUEUED_DATAGRAMS
        # The session still works.
        await ws.send(prompt(1, "after the flood"))
        assert (await recv_json(ws, timeout=20))["type"] in ("frame", "video")
        await pc.close()
        await ws.close()


async def test_video_peers_past_the_limit_are_refused_and_frames_stay_on_the_socket(
    engine: Engine,
) -> None:
    async with run_server(engine, ice_hosts=("127.0.0.1",), max_webrtc_peers=1) as srv:
        first, hello = await connect(srv.ws_url)
        assert hello["limits"]["max_webrtc_peers"] == 1
        pc, _, _ = await open_video(first)
        second, _ = await connect(srv.ws_url)
        other = await send_offer(second)
        err = await recv_json(second)
        assert err["code"] == "webrtc_failed" and "limit" in err["message"]
        await second.send(prompt(1, "still served"))
        assert (await recv_json(second))["type"] == "frame"
        for p in (pc, other):
            await p.close()
        for ws in (first, second):
            await ws.close()
