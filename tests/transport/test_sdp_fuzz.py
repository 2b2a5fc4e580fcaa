"""Fuzzing SDP handling: whatever a client offers, negotiate() answers it or reports
webrtc_failed to that session, and never raises. Offers are mutations of a real aiortc offer
(lines dropped, repeated, truncated, garbled) plus arbitrary text. ICE is pinned to 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter

from aiortc import RTCConfiguration, RTCPeerConnection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptcast.core.limits import Limits
from promptcast.core.messages import ErrorMessage, WebRTCAnswer
from promptcast.core.session import Session
from promptcast.runtime.runtime import Connection
from promptcast.transport.webrtc import WebRTCPeer, negotiate, use_ice_host_addresses

use_ice_host_addresses(["127.0.0.1"])
LIMITS = Limits(sizes=((64, 64),), default_size=(64, 64), steps=(1,), default_steps=1)


async def real_offer() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("frames")
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


OFFER_LINES = asyncio.run(real_offer()).split("\r\n")


@st.composite
def mutated_offers(draw: st.DrawFn) -> str:
    lines = list(OFFER_LINES)
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "repeat", "truncate", "garble", "insert"]))
        if op == "drop":
            del lines[i]
        elif op == "repeat":
            lines.insert(i, lines[i])
        elif op == "truncate":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif op == "garble":
            lines[i] = draw(st.text(max_size=60))
        else:
            lines.insert(i, draw(st.sampled_from(["m=video 9 UDP/TLS/RTP/SAVPF 96", "a=rtpmap:96 VP8/0",
                                                  "a=setup:bogus", "a=fingerprint:sha-256 ZZ",
                                                  "c=IN IP4 999.1.1.1", "m=", "a=ice-ufrag:"])))
        if not lines:
            lines = [""]
    return "\r\n".join(lines)


async def offer_to_server(sdp: str) -> list[object]:
    conn = Connection(Session("fuzz", LIMITS, seed=1), Counter())
    await negotiate(conn, sdp, [])
    if isinstance(conn.video, WebRTCPeer):
        await conn.video.close()
    return list(conn.control)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated_offers(), st.text(max_size=300)))
def test_any_offer_is_answered_or_reported_never_raised(sdp: str) -> None:
    sent = asyncio.run(offer_to_server(sdp))
    assert len(sent) == 1, sent
    reply = sent[0]
    assert isinstance(reply, WebRTCAnswer) or (
        isinstance(reply, ErrorMessage) and reply.code == "webrtc_failed"), reply


def test_the_real_offer_is_answered() -> None:
    [reply] = asyncio.run(offer_to_server("\r\n".join(OFFER_LINES)))
    assert isinstance(reply, WebRTCAnswer) and "127.0.0.1" in reply.sdp


def test_an_offer_without_its_first_mid_fails_cleanly_and_frees_its_ports() -> None:
    # Found by the fuzzer: with the video's a=mid dropped, aiortc cannot build an answer, and
    # its close() then fails on the half-built connection before stopping the ICE transports.
    first_mid = next(i for i, line in enumerate(OFFER_LINES) if line.startswith("a=mid:"))
    offer = "\r\n".join(OFFER_LINES[:first_mid] + OFFER_LINES[first_mid + 1:])
    sockets_before = open_sockets()
    [reply] = asyncio.run(offer_to_server(offer))
    assert isinstance(reply, ErrorMessage) and reply.code == "webrtc_failed", reply
    assert open_sockets() == sockets_before  # the ICE ports it gathered are closed


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the directory's own descriptor, gone once listed
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count
