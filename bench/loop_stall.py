"""How long does the server's event loop stall while streaming large frames?

Starts `promptcast serve` at the given size, connects one client that types for a while and
receives its frames as WebRTC video (an aiortc peer) or as WebSocket JPEGs, then reads the
server's event-loop lag metrics. Run it inside a loopback-only network namespace, so WebRTC
traffic stays on 127.0.0.1:

    scripts/pytest-loopback .venv/bin/python bench/loop_stall.py --size 512 --transport webrtc
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
import urllib.request

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from websockets.asyncio.client import connect

from promptcast.bench import local_server
from promptcast.transport.webrtc import use_ice_host_addresses


async def stream(url: str, size: int, transport: str, seconds: float) -> int:
    """Type for `seconds`; returns the number of frames received."""
    frames = 0
    async with connect(url, max_size=None) as ws:
        await ws.recv()  # hello
        pc = None
        if transport == "webrtc":
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.createDataChannel("frames")
            pc.addTransceiver("video", direction="recvonly")
            track: asyncio.Future = asyncio.get_running_loop().create_future()
            pc.on("track", lambda t: track.done() or track.set_result(t))
            await pc.setLocalDescription(await pc.createOffer())
            await ws.send(json.dumps({"type": "webrtc_offer", "sdp": pc.localDescription.sdp}))
            answer = json.loads(await ws.recv())
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
            state = json.loads(await ws.recv())
            if state != {"type": "video", "transport": "webrtc", "reason": ""}:
                raise SystemExit(f"WebRTC did not connect: {state}")
            video = await track

            async def count_video() -> None:
                nonlocal frames
                while True:
                    await video.recv()
                    frames += 1

            counter = asyncio.create_task(count_video())
        else:
            async def count_ws() -> None:
                nonlocal frames
                async for message in ws:
                    frames += isinstance(message, bytes)

            counter = asyncio.create_task(count_ws())
        text = "a lighthouse on a cliff above a stormy sea at night, oil painting"
        start, seq = time.monotonic(), 0
        while time.monotonic() - start < seconds:
            seq += 1
            await ws.send(json.dumps({"type": "prompt", "seq": seq, "text": text[: seq % len(text) + 1],
                                      "width": size, "height": size}))
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        counter.cancel()
        if pc is not None:
            await pc.close()
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--transport", choices=["webrtc", "websocket"], default="webrtc")
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    serve = ["--sizes", f"{args.size}x{args.size}", "--size", f"{args.size}x{args.size}",
             "--ice-host", "127.0.0.1", "--refine-after-ms", "0"]
    use_ice_host_addresses(["127.0.0.1"])  # this client, like the server, offers loopback only
    with local_server(serve) as url:
        frames = asyncio.run(stream(url, args.size, args.transport, args.seconds))
        metrics_url = url.replace("ws://", "http://").replace("/ws", "/metrics")
        metrics = urllib.request.urlopen(metrics_url).read().decode()

    def value(name: str) -> float:
        match = re.search(rf"^{re.escape(name)} (\S+)", metrics, re.M)
        assert match is not None, name
        return float(match.group(1))

    worst = value("promptcast_event_loop_lag_max_seconds")
    count = value("promptcast_event_loop_lag_seconds_count")
    over = {le: count - value(f'promptcast_event_loop_lag_seconds_bucket{{le="{le}"}}')
            for le in ("0.005", "0.01", "0.02", "0.05")}
    print(f"{args.transport} {args.size}px: {frames} frames in {args.seconds:.0f} s; "
          f"longest loop stall {worst * 1e3:.1f} ms; 10 ms timer checks late by more than "
          + ", ".join(f"{float(k) * 1e3:g} ms: {int(v)}" for k, v in over.items())
          + f" (of {int(count)})")


if __name__ == "__main__":
    main()
