"""/stream.mjpg against a real uvicorn on 127.0.0.1: a real websockets client types, and a raw
HTTP/1.1 client over an asyncio socket (as OBS or a browser would: chunked transfer, multipart
parts) reads the stream and decodes its JPEGs."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
from typing import Any

import pytest
from PIL import Image
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from promptcast.engine.pipeline import Engine
from promptcast.transport.http import HeaderTimeoutProtocol

from ..conftest import Server, connect, frames_until, recv_json, run_server


def prompt(seq: int, text: str, **extra: Any) -> str:
    return json.dumps({"type": "prompt", "seq": seq, "text": text, "width": 64, "height": 64,
                       **extra})


class Mjpeg:
    """A minimal MJPEG-over-HTTP/1.1 client: de-chunks the body and splits the multipart parts."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""  # the whole body of a refused request
        self._buf = b""  # de-chunked body not yet parsed
        self._eof = False
        self.boundary = b""

    @classmethod
    async def open(cls, srv: Server, query: str, headers: dict[str, str] | None = None) -> Mjpeg:
        reader, writer = await asyncio.open_connection(srv.host, srv.port)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(f"GET /stream.mjpg?{query} HTTP/1.1\r\nHost: {srv.host}:{srv.port}\r\n"
                     f"{extra}\r\n".encode())
        client = cls(reader, writer)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode().split("\r\n")
        client.status = int(lines[0].split()[1])
        client.headers = {k.lower(): v.strip() for k, _, v in
                          (line.partition(":") for line in lines[1:] if line)}
        if client.status != 200:
            client.body = await client._read_body()
            writer.close()
        else:
            ctype = client.headers["content-type"]
            client.boundary = b"--" + ctype.split("boundary=")[1].encode()
        return client

    async def _read_body(self) -> bytes:
        if "content-length" in self.headers:
            return await self.reader.readexactly(int(self.headers["content-length"]))
        out = b""
        while await self._more():
            out, self._buf = out + self._buf, b""
        return out + self._buf

    async def _more(self) -> bool:
        """One more chunk of the body into the buffer; False at its end."""
        if self._eof:
            return False
        size_line = await self.reader.readuntil(b"\r\n")
        size = int(size_line.strip(), 16)
        data = await self.reader.readexactly(size + 2)
        if size == 0:
            self._eof = True
            return False
        self._buf += data[:-2]
        return True

    async def _until(self, marker: bytes) -> bytes | None:
        while marker not in self._buf:
            if not await self._more():
                return None
        before, _, self._buf = self._buf.partition(marker)
        return before

    async def part(self, timeout: float = 20) -> tuple[dict[str, str], bytes] | None:
        """The next part's headers and JPEG, or None when the stream ended."""
        return await asyncio.wait_for(self._part(), timeout)

    async def _part(self) -> tuple[dict[str, str], bytes] | None:
        if await self._until(self.boundary + b"\r\n") is None:
            return None
        head = await self._until(b"\r\n\r\n")
        if head is None:
            return None
        headers = {k.lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in head.decode().split("\r\n"))}
        length = int(headers["content-length"])
        while len(self._buf) < length + 2:
            if not await self._more():
                return None
        jpeg, self._buf = self._buf[:length], self._buf[length + 2:]  # + the CRLF after it
        # The next boundary follows each part at once (browsers show a part when they see it).
        self._buf = self.boundary + b"\r\n" + self._buf.removeprefix(self.boundary + b"\r\n")
        return headers, jpeg

    async def part_with_seq(self, seq: int, timeout: float = 20) -> bytes:
        """Skip parts (repeats, older frames) until one shows `seq`; its JPEG."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            got = await self.part(max(0.01, deadline - asyncio.get_running_loop().time()))
            assert got is not None, "the stream ended"
            headers, jpeg = got
            if int(headers["x-promptcast-seq"]) >= seq:
                assert int(headers["x-promptcast-seq"]) == seq
                return jpeg

    def close(self) -> None:
        self.writer.close()


def picture(jpeg: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(jpeg))
    image.load()
    assert image.format == "JPEG"
    return image


async def wait_for(condition: Any, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_session_stream_shows_the_newest_prompts_frame(server: Server) -> None:
    ws, hello = await connect(server.ws_url)
    session = hello["session"]["id"]
    assert "channel" not in hello["session"]
    await ws.send(prompt(1, "a red circle"))
    [(_, first)] = await frames_until(ws, 1)
    # A viewer that joins gets the current picture at once: the very JPEG the client got.
    viewer = await Mjpeg.open(server, f"session={session}")
    assert viewer.status == 200
    assert viewer.headers["content-type"] == "multipart/x-mixed-replace; boundary=promptcastframe"
    assert "no-cache" in viewer.headers["cache-control"]
    assert await viewer.part_with_seq(1) == first
    for seq, text in enumerate(["a blue square", "a big green star", "a small yellow triangle"], 2):
        await ws.send(prompt(seq, text))
    frames = await frames_until(ws, 4)
    latest = await viewer.part_with_seq(4)
    assert latest == frames[-1][1]
    assert picture(latest).size == (64, 64)
    assert picture(latest).tobytes() != picture(first).tobytes()
    # With nothing new, the last picture comes again (about once a second), never an older one.
    headers, again = await viewer.part(5) or ({}, b"")
    assert headers["x-promptcast-seq"] == "4" and again == latest
    # The session's stream ends when its session does.
    await ws.close()
    while await viewer.part(10) is not None:  # (a repeat may have been on its way)
        pass
    viewer.close()
    await wait_for(lambda: server.runtime.viewers.count == 0)


async def test_a_channel_shows_whichever_session_is_in_it(server: Server) -> None:
    first, hello = await connect(server.ws_url + "?channel=lobby")
    assert hello["session"]["channel"] == "lobby"
    screen = await Mjpeg.open(server, "channel=lobby")
    assert screen.status == 200
    await first.send(prompt(1, "a red circle"))
    [(_, red)] = await frames_until(first, 1)
    assert await screen.part_with_seq(1) == red
    # The controller goes away and another takes over: the screen's stream goes on.
    await first.close()
    second, hello2 = await connect(server.ws_url + "?channel=lobby")
    assert hello2["session"]["id"] != hello["session"]["id"]
    await second.send(prompt(7, "a blue square"))
    [(_, blue)] = await frames_until(second, 7)
    assert await screen.part_with_seq(7) == blue
    assert picture(blue).size == (64, 64)
    # Another client not in the channel is not shown on it.
    other, _ = await connect(server.ws_url)
    await other.send(prompt(50, "a green star"))
    await frames_until(other, 50)
    await second.send(prompt(8, "a pink star"))
    [(_, pink)] = await frames_until(second, 8)
    assert await screen.part_with_seq(8) == pink
    for c in (second, other):
        await c.close()
    screen.close()


async def test_unknown_or_malformed_requests_are_refused_cleanly(server: Server) -> None:
    for query, status in [("session=nope", 404), ("channel=nobody-here", 404), ("", 400),
                          ("session=a&channel=b", 400)]:
        viewer = await Mjpeg.open(server, query)
        assert viewer.status == status, query
        assert "error" in json.loads(viewer.body)
    # A bad channel name on /ws is an error, and the connection closes with 1008.
    ws = await ws_connect(server.ws_url + "?channel=" + "x" * 65)
    err = await recv_json(ws)
    assert err["type"] == "error" and err["code"] == "out_of_range" and "channel" in err["message"]
    with pytest.raises(ConnectionClosed) as closed:
        await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    # The server goes on serving.
    ok, _ = await connect(server.ws_url)
    await ok.send(prompt(1, "a cat"))
    await frames_until(ok, 1)
    await ok.close()


async def test_the_token_is_required(engine: Engine) -> None:
    token = "mjpeg-token_1"
    async with run_server(engine, token=token) as srv:
        ws, hello = await connect(srv.ws_url + f"?token={token}&channel=stage")
        for query, headers in [("channel=stage", None), ("channel=stage&token=nope", None),
                               ("channel=stage", {"Authorization": "Bearer nope"}),
                               ("channel=nobody&token=nope", None)]:  # 403 before 404: no probing
            viewer = await Mjpeg.open(srv, query, headers)
            assert viewer.status == 403, (query, headers)
        by_query = await Mjpeg.open(srv, f"channel=stage&token={token}")
        by_header = await Mjpeg.open(srv, f"session={hello['session']['id']}",
                                     {"Authorization": f"Bearer {token}"})
        assert by_query.status == by_header.status == 200
        await ws.send(prompt(1, "a red circle"))
        [(_, jpeg)] = await frames_until(ws, 1)
        assert await by_query.part_with_seq(1) == jpeg == await by_header.part_with_seq(1)
        by_query.close()
        by_header.close()
        await ws.close()


async def test_the_viewer_cap_is_reported_and_enforced(engine: Engine) -> None:
    async with run_server(engine, max_mjpeg_viewers=2) as srv:
        ws, hello = await connect(srv.ws_url + "?channel=wall")
        assert hello["limits"]["max_mjpeg_viewers"] == 2
        a = await Mjpeg.open(srv, "channel=wall")
        b = await Mjpeg.open(srv, f"session={hello['session']['id']}")
        c = await Mjpeg.open(srv, "channel=wall")
        assert (a.status, b.status, c.status) == (200, 200, 503)
        assert c.headers["retry-after"] == "5"
        # A viewer that hangs up frees its place.
        a.close()
        await wait_for(lambda: srv.runtime.viewers.count == 1)
        d = await Mjpeg.open(srv, "channel=wall")
        assert d.status == 200
        _, metrics = await asyncio.to_thread(_get_text, srv.http_url + "/metrics")
        assert "promptcast_mjpeg_viewers 2.0" in metrics
        for v in (b, d):
            v.close()
        await ws.close()


def _get_text(url: str) -> tuple[int, str]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read().decode()


async def test_a_slow_viewer_delays_no_one(server: Server) -> None:
    """Viewer `stuck` never reads; viewer `fast` and the typing client still get each newest
    frame at once. (On loopback the kernel's socket buffers, up to megabytes, absorb what the
    stuck viewer does not read, so its writes rarely block here; the skipping that follows when
    they do is tested in tests/core/test_viewers.py.)"""
    ws, _ = await connect(server.ws_url + "?channel=show")
    stuck = await Mjpeg.open(server, "channel=show")
    fast = await Mjpeg.open(server, "channel=show")
    loop = asyncio.get_running_loop()
    for seq in range(1, 31):
        await ws.send(prompt(seq, f"a {['red', 'blue', 'green', 'pink'][seq % 4]} star",
                             width=128, height=128, seed=seq))
        sent = loop.time()
        [(_, jpeg)] = await frames_until(ws, seq)
        client_s = loop.time() - sent
        assert await fast.part_with_seq(seq, timeout=5) == jpeg
        viewer_s = loop.time() - sent
        assert viewer_s - client_s < 1.0, (seq, client_s, viewer_s)
    # When it reads again it catches up to the newest picture.
    assert await stuck.part_with_seq(30, timeout=20) == jpeg
    for v in (stuck, fast):
        v.close()
    await ws.close()


async def test_head_answers_the_streams_head_and_holds_no_place(engine: Engine) -> None:
    async with run_server(engine, max_mjpeg_viewers=1) as srv:
        ws, _ = await connect(srv.ws_url + "?channel=show")
        reader, writer = await asyncio.open_connection(srv.host, srv.port)
        for _ in range(2):  # the kept-alive connection answers its next request too
            writer.write(b"HEAD /stream.mjpg?channel=show HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 ") and b"multipart/x-mixed-replace" in head
        assert srv.runtime.viewers.count == 0
        viewer = await Mjpeg.open(srv, "channel=show")
        assert viewer.status == 200
        viewer.close()
        writer.close()
        await ws.close()


async def test_a_viewer_that_stops_reading_frees_its_place(
    engine: Engine, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A screen that hangs but keeps its TCP connection (its stack acknowledges, with a zero
    # window): once its buffers are full the stream's write waits, and uvicorn sets no limit,
    # so the viewer held its place under the cap for ever.
    monkeypatch.setattr(HeaderTimeoutProtocol, "write_timeout_s", 1.0)
    loop = asyncio.get_running_loop()
    async with run_server(engine, max_mjpeg_viewers=1) as srv:
        ws, _ = await connect(srv.ws_url + "?channel=show")
        reading = asyncio.create_task(_read_all(ws))
        sock = socket.socket()  # the viewer: read from by nobody
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, (srv.host, srv.port))
        await loop.sock_sendall(sock, b"GET /stream.mjpg?channel=show HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_for(lambda: srv.runtime.viewers.count == 1)
        # The server's end of it, with a small send buffer, which a few frames fill.
        [proto] = [p for p in srv.uvicorn.server_state.connections
                   if p.transport.get_extra_info("peername")[1] == sock.getsockname()[1]]
        proto.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                            4096)
        w, h = max(srv.runtime.limits.sizes)
        seq = 0
        while not proto.flow.write_paused:
            seq += 1
            assert seq < 200, "the viewer's writes never paused"
            await ws.send(prompt(seq, f"a fox {seq}", width=w, height=h, seed=seq))
            await asyncio.sleep(0.04)
        await wait_for(lambda: srv.runtime.viewers.count == 0, timeout=1.0 + 5)
        viewer = await Mjpeg.open(srv, "channel=show")
        assert viewer.status == 200
        viewer.close()
        sock.close()
        reading.cancel()
        await ws.close()


async def _read_all(ws: Any) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await ws.recv()


async def test_shutdown_ends_the_streams_without_waiting(engine: Engine) -> None:
    loop = asyncio.get_running_loop()
    async with run_server(engine, shutdown_timeout_s=20) as srv:
        ws, hello = await connect(srv.ws_url + "?channel=end")
        viewers = [await Mjpeg.open(srv, "channel=end"),
                   await Mjpeg.open(srv, f"session={hello['session']['id']}")]
        await ws.send(prompt(1, "a red circle"))
        await frames_until(ws, 1)
        for v in viewers:
            await v.part_with_seq(1)

        async def read_to_end(v: Mjpeg) -> None:
            while await v.part(30) is not None:
                pass

        readers = [asyncio.create_task(read_to_end(v)) for v in viewers]
        stopping = loop.time()
    # uvicorn's graceful shutdown (what SIGTERM starts) waits up to 10 s for responses in flight;
    # the streams ended at once instead, their chunked bodies properly terminated.
    assert loop.time() - stopping < 3
    await asyncio.wait_for(asyncio.gather(*readers), 5)
    with pytest.raises(ConnectionClosed):
        await ws.recv()
