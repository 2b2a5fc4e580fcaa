"""Connection liveness against a real server: the idle timeout, ping/pong keepalive, and what
hello says about them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from promptcast.cli import uvicorn_config
from promptcast.config import Config
from promptcast.engine.pipeline import Engine

from ..conftest import Server, connect, run_server

IDLE = 1.0  # --idle-timeout in these tests


def prompt(seq: int, text: str) -> str:
    return json.dumps({"type": "prompt", "seq": seq, "text": text, "width": 64, "height": 64,
                       "steps": 1})


async def drain(ws: Any) -> None:
    """Read (and drop) what the server sends, so its frames never back up."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await ws.recv()


async def sessions_drop_to(srv: Server, n: int, limit: float = 10) -> None:
    async with asyncio.timeout(limit):
        while len(srv.runtime.connections) != n:
            await asyncio.sleep(0.02)


async def test_hello_reports_the_defaults(server: Server) -> None:
    ws, hello = await connect(server.ws_url)
    await ws.close()
    limits = hello["limits"]
    assert (limits["idle_timeout_s"], limits["ping_interval_s"], limits["ping_timeout_s"]) == (
        0.0, 20.0, 20.0)


async def test_an_idle_client_is_closed_with_1000_idle_timeout(engine: Engine) -> None:
    loop = asyncio.get_running_loop()
    async with run_server(engine, idle_timeout_s=IDLE, ws_ping_interval_s=5,
                          ws_ping_timeout_s=3) as srv:
        ws, hello = await connect(srv.ws_url)
        opened = loop.time()
        assert (hello["limits"]["idle_timeout_s"], hello["limits"]["ping_interval_s"],
                hello["limits"]["ping_timeout_s"]) == (IDLE, 5.0, 3.0)
        await asyncio.wait_for(drain(ws), IDLE + 5)
        elapsed = loop.time() - opened
        assert ws.close_code == 1000 and ws.close_reason == "idle timeout"
        assert 0.9 * IDLE <= elapsed < IDLE + 3
        await sessions_drop_to(srv, 0)


async def test_a_client_that_keeps_typing_is_not_closed(engine: Engine) -> None:
    loop = asyncio.get_running_loop()
    async with run_server(engine, idle_timeout_s=IDLE) as srv:
        ws, _ = await connect(srv.ws_url)
        reader = asyncio.create_task(drain(ws))
        for seq in range(1, 13):  # 3 s of typing, three idle timeouts
            await ws.send(prompt(seq, "a fox" + "!" * seq))
            await asyncio.sleep(IDLE / 4)
        assert not reader.done() and len(srv.runtime.connections) == 1
        stopped = loop.time()
        await asyncio.wait_for(reader, IDLE + 5)  # once it stops, the timeout runs again
        assert ws.close_code == 1000
        assert loop.time() - stopped >= 0.9 * IDLE - IDLE / 4


async def test_no_idle_timeout_by_default(server: Server) -> None:
    ws, _ = await connect(server.ws_url)
    await asyncio.sleep(1.5)
    await ws.send(prompt(1, "still connected"))
    assert len(server.runtime.connections) == 1
    await ws.close()


def handshake_request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


async def raw_handshake(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket connection that completes its handshake and then plays dead: it never
    reads again, so it answers no ping."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(handshake_request(port))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101 ")
    return reader, writer


async def test_a_peer_that_answers_no_ping_is_dropped(engine: Engine) -> None:
    loop = asyncio.get_running_loop()
    ping, pong = 0.3, 0.3
    async with run_server(engine, ws_ping_interval_s=ping, ws_ping_timeout_s=pong) as srv:
        live, _ = await connect(srv.ws_url)  # a real client answers pings by itself
        reader = asyncio.create_task(drain(live))
        _, writer = await raw_handshake(srv.port)
        await sessions_drop_to(srv, 2)
        opened = loop.time()
        await sessions_drop_to(srv, 1)
        elapsed = loop.time() - opened
        assert 0.9 * (ping + pong) <= elapsed < ping + pong + 3
        await asyncio.sleep(5 * ping)  # the live client stays through more pings
        assert not reader.done() and len(srv.runtime.connections) == 1
        await live.close()
        writer.close()


def masked_text(text: str) -> bytes:
    """A client's text frame (clients must mask), for a raw connection."""
    payload, mask = text.encode(), os.urandom(4)
    assert len(payload) < 126
    return (bytes([0x81, 0x80 | len(payload)]) + mask
            + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


async def test_a_peer_that_stopped_reading_with_frames_piled_up_is_dropped(engine: Engine) -> None:
    # A frozen tab or a hung plugin: its TCP stack still acknowledges, with a zero window, but
    # it never reads. Once its frames fill the socket, uvicorn's own close after the ping
    # timeout waited for them to drain, for ever: the session kept its place.
    ping, pong = 3.0, 0.5  # (the first ping after the frames have piled up)
    async with run_server(engine, ws_ping_interval_s=ping, ws_ping_timeout_s=pong) as srv:
        loop = asyncio.get_running_loop()
        sock = socket.socket()  # read from by nobody, not even a stream reader's buffer
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", srv.port))
        await loop.sock_sendall(sock, handshake_request(srv.port))
        await sessions_drop_to(srv, 1)
        # The server's end of it, with a small send buffer, which a few frames fill.
        [proto] = [p for p in srv.uvicorn.server_state.connections
                   if p.transport.get_extra_info("peername")[1] == sock.getsockname()[1]]
        proto.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                            4096)
        w, h = max(srv.runtime.limits.sizes)
        for seq in range(1, 51):
            await loop.sock_sendall(sock, masked_text(json.dumps(
                {"type": "prompt", "seq": seq, "text": f"fox {seq}", "width": w, "height": h,
                 "seed": seq})))
            await asyncio.sleep(0.04)
        assert proto.transport.get_write_buffer_size() > 0  # frames wait that will never go
        await sessions_drop_to(srv, 0, limit=ping + pong + 5)
        assert proto.transport.is_closing()
        sock.close()


def test_zero_turns_pings_and_the_header_timeout_off() -> None:
    zero = Config(ws_ping_interval_s=0, ws_ping_timeout_s=0, header_timeout_s=0)
    uv = uvicorn_config(object(), zero)
    # uvicorn reads None as off; a ping timeout of 0 would drop every peer at its first ping.
    assert uv.ws_ping_interval is None and uv.ws_ping_timeout is None
    assert uv.http.header_timeout_s == 0
    uv = uvicorn_config(object(), Config())
    assert (uv.ws_ping_interval, uv.ws_ping_timeout, uv.http.header_timeout_s) == (20.0, 20.0, 10.0)


@pytest.mark.parametrize("text", ["-1", "nan", "inf", "soon"])
def test_timeouts_must_be_finite_and_not_negative(text: str) -> None:
    from promptcast.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--idle-timeout", text])
    assert build_parser().parse_args(["serve", "--idle-timeout", "90"]).idle_timeout == 90.0
