"""The deadline for HTTP requests (slowloris), with raw sockets against a real server."""

from __future__ import annotations

import asyncio
import contextlib

from promptcast.engine.pipeline import Engine

from ..conftest import connect, frames_until, http_get, run_server

TIMEOUT = 1.0  # --header-timeout in these tests
HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
ALIVE = b'{"status":"alive"}'


async def open_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def until_closed(reader: asyncio.StreamReader, limit: float = 10) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    loop = asyncio.get_running_loop()
    started, data = loop.time(), b""
    async with asyncio.timeout(limit):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(4096):
                data += chunk
    return data, loop.time() - started


async def test_a_half_sent_request_head_is_cut_off_after_the_timeout(engine: Engine) -> None:
    async with run_server(engine, header_timeout_s=TIMEOUT) as srv:
        reader, writer = await open_raw(srv.port)
        writer.write(HEAD)  # never the blank line that ends the head
        closing = asyncio.create_task(until_closed(reader))
        # Meanwhile the server answers everyone else.
        assert await http_get(srv.http_url + "/healthz") == (200, ALIVE.decode())
        data, elapsed = await closing
        writer.close()
    assert data.startswith(b"HTTP/1.1 408 ")
    assert 0.9 * TIMEOUT <= elapsed < TIMEOUT + 3


async def test_a_connection_that_never_sends_a_byte_is_closed(engine: Engine) -> None:
    async with run_server(engine, header_timeout_s=TIMEOUT) as srv:
        reader, writer = await open_raw(srv.port)
        data, elapsed = await until_closed(reader)
        writer.close()
    assert data == b""  # nothing was asked, so nothing is answered
    assert 0.9 * TIMEOUT <= elapsed < TIMEOUT + 3


async def test_a_slow_but_complete_request_is_answered(engine: Engine) -> None:
    async with run_server(engine, header_timeout_s=TIMEOUT) as srv:
        assert await http_get(srv.http_url + "/healthz") == (200, ALIVE.decode())
        reader, writer = await open_raw(srv.port)
        for part in (b"GET /healthz HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", b"Connection: close\r\n",
                     b"\r\n"):
            writer.write(part)
            await asyncio.sleep(0.15)  # 0.45 s in all, within the timeout
        data, _ = await until_closed(reader)
        writer.close()
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(ALIVE)


async def test_the_next_request_on_a_kept_alive_connection_has_the_same_deadline(
    engine: Engine,
) -> None:
    loop = asyncio.get_running_loop()
    async with run_server(engine, header_timeout_s=TIMEOUT) as srv:
        reader, writer = await open_raw(srv.port)
        for _ in range(2):  # complete requests keep the connection
            writer.write(HEAD + b"\r\n")
            response = await asyncio.wait_for(reader.readuntil(ALIVE), 10)
            assert response.startswith(b"HTTP/1.1 200 ")
        await asyncio.sleep(0.6 * TIMEOUT)  # idle between requests: uvicorn's keep-alive (5 s)
        writer.write(HEAD)  # the third never completes: its deadline runs from its first byte
        sent = loop.time()
        data, _ = await until_closed(reader)
        elapsed = loop.time() - sent
        writer.close()
    assert data.startswith(b"HTTP/1.1 408 ")
    assert 0.9 * TIMEOUT <= elapsed < TIMEOUT + 3


async def test_a_body_sent_a_byte_at_a_time_is_cut_off(engine: Engine) -> None:
    async with run_server(engine, header_timeout_s=TIMEOUT) as srv:
        reader, writer = await open_raw(srv.port)
        writer.write(b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n")

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(100):
                    writer.write(b"x")
                    await writer.drain()
                    await asyncio.sleep(0.1)

        sender = asyncio.create_task(trickle())
        data, elapsed = await until_closed(reader)
        sender.cancel()
        writer.close()
    assert data.startswith(b"HTTP/1.1 405 ")  # no route takes a body; the rest is cut off
    assert elapsed < TIMEOUT + 3


async def test_a_websocket_outlives_the_header_timeout(engine: Engine) -> None:
    async with run_server(engine, header_timeout_s=0.3) as srv:
        ws, _ = await connect(srv.ws_url)
        await asyncio.sleep(1.0)
        await ws.send('{"type": "prompt", "seq": 1, "text": "still here", "width": 64, "height": 64}')
        assert (await frames_until(ws, 1))[-1][0]["seq"] == 1
        await ws.close()
