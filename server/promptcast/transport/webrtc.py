"""WebRTC video for a session (aiortc): signalling arrives over /ws, frames leave as video.

The track holds one frame, the newest: the encoder always gets the latest picture and never a
backlog. Which seq each video frame shows goes to the page over a data channel, with the
frame's RTP presentation timestamp, so the page can tell which keystroke it is displaying.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import aioice.ice
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from av import VideoFrame

from promptcast.core import ice as core_ice
from promptcast.core.messages import ErrorCode, ErrorMessage, VideoState, WebRTCAnswer
from promptcast.engine.yuv import video_frame
from promptcast.runtime.runtime import Connection, Describe

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000  # RTP clock rate of video
# With no new picture, the last one is re-sent this often, so a receiver that lost packets
# (or just joined) gets a fresh keyframe-able frame instead of a frozen broken one.
REPEAT_AFTER_S = 1.0
# Successive frames' pts differ by at least this (1 ms): browsers report a displayed frame's RTP
# timestamp a tick off now and then, and the page (client/web/videoseq.js) matches it to a
# frame's metadata within a few ticks, which must never be ambiguous.
MIN_PTS_GAP = 90
CONNECT_TIMEOUT_S = 10.0  # a peer that has not connected by then is closed


def parse_ice_server(url: str) -> RTCIceServer:
    """`stun:host:port` or `turn:user:password@host:port?transport=udp` as aiortc's
    RTCIceServer (core.ice parses it). Raises ValueError."""
    server = core_ice.parse_ice_server(url)
    return RTCIceServer(urls=server.urls, username=server.username, credential=server.credential)


def use_ice_host_addresses(addresses: Sequence[str]) -> None:
    """Offer exactly these host candidates (e.g. 127.0.0.1 in tests, a public IP in a NAT-less
    deployment). aioice has no per-connection setting for this, only its address lookup, which
    also skips loopback: the lookup is replaced for this process, which serves one config."""
    chosen = list(addresses)
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [
        a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)
    ]


# aioice (0.13) queues every datagram that reaches an ICE port and is not STUN, without bound,
# connected or not: a spoofed UDP flood at a candidate port grew a process from 27 to 332 MB.
# Media is read as it arrives, so a backlog this long is a flood; what is past it is dropped,
# as a router would drop it (DTLS and SRTP recover from loss).
MAX_QUEUED_DATAGRAMS = 256


def _bounded_data_received(self: aioice.ice.Connection, data: bytes, component: int) -> None:
    if self._queue.qsize() < MAX_QUEUED_DATAGRAMS:
        self._queue.put_nowait((data, component))


aioice.ice.Connection.data_received = _bounded_data_received  # type: ignore[method-assign]


class LatestFrameTrack(MediaStreamTrack):
    """A video track that yields the newest offered frame, never an older one."""

    kind = "video"

    def __init__(self, on_sent: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self._on_sent = on_sent
        # Not yet taken: (pixels, what describes it, I420 planes or None); last sent: (pixels,
        # its description, planes), sent again as it is when no new frame comes.
        self._pending: tuple[np.ndarray, Describe, np.ndarray | None] | None = None
        self._last: tuple[np.ndarray, dict[str, Any], np.ndarray | None] | None = None
        self._new = asyncio.Event()
        self._start = time.monotonic()
        self._last_pts = -MIN_PTS_GAP

    def offer(self, pixels: np.ndarray, describe: Describe, yuv: np.ndarray | None = None,
              first: bool = False) -> bool:
        """pixels: (H, W, 3) uint8 RGB; yuv: its (H * 3 / 2, W) I420 planes, where the engine
        made them; `describe()` gives the frame's metadata, called once, when the frame is
        sent. Replaces any frame not yet taken by the encoder, and says whether it did (that
        frame is never sent); with `first`, only if the track has had no frame at all."""
        if first and (self._pending is not None or self._last is not None):
            return False
        replaced = self._pending is not None
        self._pending = (pixels, describe, yuv)
        self._new.set()
        return replaced

    async def recv(self) -> VideoFrame:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), REPEAT_AFTER_S)
            self._new.clear()
            if self._pending is not None or self._last is not None:
                break
        if self._pending is not None:  # a new frame: described (and so counted) once, now
            pixels, describe, yuv = self._pending
            self._pending, self._last = None, (pixels, describe(), yuv)
        assert self._last is not None
        pixels, meta, yuv = self._last
        # Colour conversion of a large frame takes milliseconds, and even wrapping planes a
        # fraction of one: not on the event loop.
        frame = await asyncio.to_thread(video_frame, pixels, yuv)
        pts = max(self._last_pts + MIN_PTS_GAP, int((time.monotonic() - self._start) * VIDEO_CLOCK))
        self._last_pts = pts
        frame.pts, frame.time_base = pts, Fraction(1, VIDEO_CLOCK)
        self._on_sent({**meta, "pts": pts})
        return frame


class WebRTCPeer:
    """One session's peer connection: the video track, and the data channel for frame metadata.
    Implements the runtime's VideoSink."""

    def __init__(self, conn: Connection, ice_servers: Sequence[RTCIceServer]) -> None:
        self.conn = conn
        self.active = False
        # An explicit list, even empty: aiortc's default contacts a public STUN server.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=list(ice_servers)))
        self.track = LatestFrameTrack(self._send_meta)
        self.pc.addTrack(self.track)
        self._channel: Any = None
        self._closed = False
        self._fallback: asyncio.Future[None] | None = None
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_state)
        self._timeout = asyncio.get_running_loop().call_later(CONNECT_TIMEOUT_S, self._give_up)

    async def answer(self, offer_sdp: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())  # gathers candidates
        return str(self.pc.localDescription.sdp)

    def offer(self, pixels: np.ndarray, describe: Describe, yuv: np.ndarray | None = None,
              first: bool = False) -> bool:
        return self.track.offer(pixels, describe, yuv, first)

    def _on_datachannel(self, channel: Any) -> None:
        self._channel = channel

    def _send_meta(self, meta: dict[str, Any]) -> None:
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            channel.send(json.dumps(meta, separators=(",", ":")))

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and not self.active:
            self._timeout.cancel()
            self.active = True
            self.conn.send(VideoState("webrtc"))
            if self.conn.on_video_started is not None:
                self.conn.on_video_started()
        elif state in ("failed", "closed", "disconnected"):
            await self._fall_back(f"peer connection {state}")

    def _give_up(self) -> None:
        if not self.active:
            self._fallback = asyncio.ensure_future(self._fall_back("peer connection timed out"))

    async def _fall_back(self, reason: str) -> None:
        if self._closed:
            return
        was_active = self.active
        await self.close()
        if self.conn.video is self:
            self.conn.video = None
        if not self.conn.closed:
            log.info("session %s: %s; frames go over the WebSocket", self.conn.session.id, reason)
            self.conn.send(VideoState("websocket", reason if was_active or reason else ""))

    async def close(self) -> None:
        self._closed = True
        self.active = False
        self._timeout.cancel()
        self.track.stop()
        try:
            await self.pc.close()
        except Exception as exc:
            # aiortc cannot close a connection an odd offer left half-built (found by fuzzing: an
            # offer whose data channel has no a=mid leaves its SCTP transport unattached, and
            # close() fails on it before stopping anything else). Stop the transports
            # ourselves, so no UDP port stays open.
            log.debug("session %s: closing a half-built peer: %r", self.conn.session.id, exc)
            for transceiver in self.pc.getTransceivers():
                dtls = transceiver.sender.transport
                with contextlib.suppress(Exception):
                    await dtls.stop()
                with contextlib.suppress(Exception):
                    await dtls.transport.stop()


async def negotiate(conn: Connection, offer_sdp: str, ice_servers: Sequence[RTCIceServer]) -> None:
    """Answer a session's offer; until the peer connects, frames keep going over the WebSocket.
    Offers are answered in turn, the newest winning: one that arrives while an earlier one is
    answered (a page's retry, a plugin's second offer) closes the earlier one's peer, which is
    neither answered nor reported as an error, so no peer is left that the session does not
    hold (and close)."""
    conn.video_offers += 1
    mine = conn.video_offers
    old = conn.video
    if isinstance(old, WebRTCPeer):
        conn.video = None
        await old.close()
    if conn.closed or conn.video_offers != mine:
        return  # a newer offer came while the old peer closed: it answers
    peer = WebRTCPeer(conn, ice_servers)
    conn.video = peer
    try:
        answer = await peer.answer(offer_sdp)
    except Exception as exc:  # a malformed SDP is the client's fault, not a server error
        await peer.close()
        if conn.video is peer:
            conn.video = None
        if conn.video_offers == mine:  # (else a newer offer closed it mid-answer)
            conn.send(ErrorMessage(ErrorCode.WEBRTC_FAILED, f"could not answer the offer: {exc}"))
        return
    if conn.closed or conn.video_offers != mine:
        await peer.close()
        if conn.video is peer:
            conn.video = None
        return
    conn.send(WebRTCAnswer(answer))
