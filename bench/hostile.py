"""Hostile inputs, one probe each, and what the server did: the table in docs/reliability.md.

Each probe runs against the real app and uvicorn (bench/fake_engine.py behind it) on
127.0.0.1 only. Some probes need frames no well-behaved client library will send (invalid
UTF-8 in a text frame, a header announcing an exabyte), so they speak raw RFC 6455 over a
socket. After every probe, a fresh, well-behaved client must still get a frame, or the probe
counts as having hurt the server.

    .venv/bin/python bench/hostile.py              # every probe
    .venv/bin/python bench/hostile.py slowloris    # only the probes whose name contains a word
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reliability import fake_server

# ------------------------------------------------------------ raw RFC 6455


class RawSocket(socket.socket):
    raw_head = ""  # the handshake response's status line and headers
    raw_rest = b""  # bytes that came after them


def raw_connect(port: int, extensions: str = "") -> RawSocket:
    sock = RawSocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               + (f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else "") + "\r\n")
    sock.sendall(request.encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    head, _, rest = response.partition(b"\r\n\r\n")
    sock.raw_head, sock.raw_rest = head.decode(), rest
    return sock


def frame(opcode: int, payload: bytes, rsv1: bool = False, length: int | None = None) -> bytes:
    """A masked client frame; `length` may lie about the payload's size."""
    n = len(payload) if length is None else length
    head = bytes([0x80 | (0x40 if rsv1 else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_until_close(sock: RawSocket) -> tuple[list[str], int | None]:
    """Server text messages (their error codes, or types) until it closes; and its close code."""
    buf = sock.raw_rest
    seen: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        while len(buf) >= 2:
            opcode, n = buf[0] & 0x0F, buf[1] & 0x7F
            offset = 2
            if n == 126:
                n, offset = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                n, offset = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < offset + n:
                break
            payload, buf = buf[offset:offset + n], buf[offset + n:]
            if opcode == 8:
                return seen, struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            if opcode == 1:
                msg = json.loads(payload)
                seen.append(msg.get("code") or msg["type"])
        try:
            data = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not data:
            return seen, None
        buf += data
    return seen, None


# ------------------------------------------------------------ probes


async def over_ws(url: str, *messages: str | bytes, wait: float = 1.0) -> str:
    """Send `messages` with a normal client; report the errors and the close code seen."""
    codes: list[str] = []
    async with connect(url, max_size=None) as ws:
        await ws.recv()  # hello
        try:
            for m in messages:
                await ws.send(m)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    while True:
                        raw = await ws.recv()
                        if isinstance(raw, str):
                            msg = json.loads(raw)
                            codes.append(msg.get("code") or msg["type"])
        except ConnectionClosed as closed:
            return _summary(codes, closed.rcvd.code if closed.rcvd else None)
    return _summary(codes, None)


def _summary(codes: list[str], close: int | None) -> str:
    counts: dict[str, int] = {}
    for c in codes:
        counts[c] = counts.get(c, 0) + 1
    said = ", ".join(f"`{c}`" + (f" ×{n}" if n > 1 else "") for c, n in counts.items()) or "nothing"
    return f"answered {said}; " + (f"closed with {close}" if close else "connection stays open")


def raw_probe(port: int, data: bytes, extensions: str = "") -> str:
    sock = raw_connect(port, extensions)
    try:
        sock.sendall(data)
        seen, close = read_until_close(sock)
    finally:
        sock.close()
    seen = [s for s in seen if s != "hello"]
    return _summary(seen, close)


def closed_by_server(sock: socket.socket) -> bytes | None:
    """None while `sock` is open and unanswered; else what the server said before closing it
    (b"" for nothing: it answers a half-sent request only to close the connection)."""
    try:
        return sock.recv(4096, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except OSError:
        return b""


async def slowloris(port: int, base: str, connections: int = 200, hold_s: float = 20.0) -> str:
    """Many connections that send their request headers a byte at a time, never finishing:
    how long the server holds them, and whether it answers others meanwhile."""
    started = time.perf_counter()
    socks = []
    for _ in range(connections):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    closed_at: dict[int, float] = {}
    answers: set[bytes] = set()  # the status lines of what the server said on closing
    times = []
    while time.perf_counter() - started < hold_s and len(closed_at) < connections:
        for i, s in enumerate(socks):
            if i in closed_at:
                continue
            answer = closed_by_server(s)
            if answer is not None:
                closed_at[i] = time.perf_counter() - started
                answers.add(answer.split(b"\r\n")[0])
                continue
            with contextlib.suppress(OSError):
                s.sendall(b"X")
        t0 = time.perf_counter()
        await asyncio.to_thread(lambda: __import__("urllib.request").request.urlopen(
            base + "/healthz", timeout=10).read())
        times.append((time.perf_counter() - t0) * 1e3)
        await asyncio.sleep(0.25)
    for s in socks:
        s.close()
    said = (f"{connections} half-sent requests, one more byte each every 0.25 s: `/healthz` "
            f"answered throughout (slowest {max(times):.0f} ms); ")
    if len(closed_at) < connections:
        return said + f"{connections - len(closed_at)} of them still open after {hold_s:g} s"
    statuses = " or ".join(sorted(a.decode(errors="replace") or "nothing" for a in answers))
    return (said + f"the server closed them all {min(closed_at.values()):.1f}-"
            f"{max(closed_at.values()):.1f} s after they opened, answering {statuses}")


async def compressed(port: int) -> str:
    sock = await asyncio.to_thread(raw_connect, port, "permessage-deflate")
    negotiated = "permessage-deflate" in sock.raw_head.lower()
    sock.close()
    outcome = await asyncio.to_thread(raw_probe, port, frame(1, b"\x00" * 64, rsv1=True),
                                      "permessage-deflate")
    return f"deflate {'negotiated' if negotiated else 'refused at the handshake'}; {outcome}"


async def foreign_origin(url: str) -> str:
    try:
        ws = await connect(url, origin="http://evil.example")  # type: ignore[arg-type]
    except InvalidStatus as exc:
        return f"HTTP {exc.response.status_code} before the upgrade"
    await ws.close()
    return "accepted (wrong)"


async def healthy(url: str, n: int) -> bool:
    """A fresh client gets a frame for a prompt."""
    async with connect(url, max_size=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "prompt", "seq": 1, "text": f"health check {n}"}))
        async with asyncio.timeout(10):
            while not isinstance(await ws.recv(), bytes):
                pass
    return True


async def main() -> None:
    with fake_server(5.0, 8) as (base, proc):
        port = int(base.rsplit(":", 1)[1])
        url = f"ws://127.0.0.1:{port}/ws"
        offer = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
        probes: list[tuple[str, Callable[[], Awaitable[str]]]] = [
            ("malformed JSON", lambda: over_ws(url, '{"type": "prompt", "seq": ')),
            ("wrong types", lambda: over_ws(url, '{"type": "prompt", "seq": "1", "text": 5}')),
            ("NaN", lambda: over_ws(url, '{"type": "prompt", "seq": 1, "text": "a", "seed": NaN}')),
            ("huge integer (400 digits)",
             lambda: over_ws(url, '{"type": "prompt", "seq": 1' + "0" * 400 + ', "text": "a"}')),
            ("integer of 5,000 digits (past Python's int parsing limit)",
             lambda: over_ws(url, '{"type": "prompt", "seq": 1' + "0" * 5000 + ', "text": "a"}')),
            ("deeply nested JSON (6,000 levels)", lambda: over_ws(url, "[" * 6000 + "]" * 6000)),
            ("over-long text (1,001 characters)",
             lambda: over_ws(url, json.dumps({"type": "prompt", "seq": 1, "text": "a" * 1001}))),
            ("message over the 16 KiB limit",
             lambda: over_ws(url, json.dumps({"type": "prompt", "seq": 1, "text": "a" * 20000}))),
            ("binary where text is expected", lambda: over_ws(url, b"\x00" * 100)),
            ("message of 2 MiB", lambda: over_ws(url, "x" * (2 << 20))),
            ("message of 5 MiB (over the transport limit)", lambda: over_ws(url, "x" * (5 << 20))),
            ("message flood (1,000 prompts at once)",
             lambda: over_ws(url, *(json.dumps({"type": "prompt", "seq": i, "text": str(i)})
                                    for i in range(1, 1001)), wait=2)),
            ("bad SDP", lambda: over_ws(url, json.dumps({"type": "webrtc_offer", "sdp": "v=0 junk"}))),
            ("oversize SDP (20 KiB)",
             lambda: over_ws(url, json.dumps({"type": "webrtc_offer", "sdp": offer + "a=x\r\n" * 3500}))),
        ]
        probes += [
            ("invalid UTF-8 in a text frame",
             lambda: asyncio.to_thread(raw_probe, port, frame(1, b'{"type": "\xff\xfe"}'))),
            ("frame header announcing 2^62 bytes",
             lambda: asyncio.to_thread(raw_probe, port, frame(2, b"", length=1 << 62))),
            ("compression bomb (a compressed frame)", lambda: compressed(port)),
            ("slowloris on HTTP", lambda: slowloris(port, base)),
            ("foreign Origin (cross-site hijacking)", lambda: foreign_origin(url)),
        ]
        words = sys.argv[1:]
        probes = [(name, probe) for name, probe in probes
                  if not words or any(w.lower() in name.lower() for w in words)]
        print("| probe | what the server did | a fresh client served after it |")
        print("|---|---|---|")
        for i, (name, probe) in enumerate(probes):
            outcome = await probe()
            ok = await healthy(url, i)
            print(f"| {name} | {outcome} | {'yes' if ok else 'NO'} |", flush=True)
        print(f"\nserver process alive at the end: {proc.poll() is None}")


if __name__ == "__main__":
    asyncio.run(main())
