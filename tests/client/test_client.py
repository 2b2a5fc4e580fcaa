"""The async Client against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from promptcast_client import AuthError, Client, ProtocolError, ServerError, ServerUnavailable
from websockets.asyncio.server import ServerConnection, serve

from ..conftest import Server, connect, frames_until, run_server
from .helpers import SIZE, png


async def test_frames_carry_seq_timings_and_size(server: Server) -> None:
    async with Client(server.ws_url) as client:
        assert client.hello is not None and client.hello["protocol"] == 1
        seqs = [await client.send_prompt(text, size=SIZE) for text in ("a", "a red", "a red circle")]
        assert seqs == sorted(seqs) and len(set(seqs)) == 3
        frames = [frame async for frame in _until(client, seqs[-1])]
    got = [f.seq for f in frames]
    assert got == sorted(got) and got[-1] == seqs[-1]
    last = frames[-1]
    assert (last.width, last.height, last.format, last.refined) == (*SIZE, "jpeg", False)
    assert last.seed == client.hello["session"]["seed"]
    assert last.timings["total_ms"] >= last.timings["denoise_ms"] >= 0
    assert last.latency_ms is not None and last.latency_ms > 0
    assert last.to_pil().size == SIZE
    assert last.to_numpy().shape == (SIZE[1], SIZE[0], 3)


async def _until(client: Client, seq: int) -> Any:
    async for frame in client:
        yield frame
        if frame.seq >= seq:
            return


async def test_settings_and_img2img_reach_the_server(server: Server) -> None:
    async with Client(server.ws_url) as client:
        seq = await client.send_prompt("a red circle", seed=42, steps=1, size=SIZE)
        frame = await client.wait_for(seq)
        assert (frame.seed, frame.steps) == (42, 1)
        seq = await client.send_image(png(), strength=0.6)
        assert (await client.wait_for(seq)).seq == seq
        seq = await client.clear_image()
        assert (await client.wait_for(seq)).seq == seq


async def test_same_prompt_twice_is_answered_by_the_earlier_frame(server: Server) -> None:
    async with Client(server.ws_url) as client:
        first = await client.wait_for(await client.send_prompt("a star", size=SIZE))
        again = await client.wait_for(await client.send_prompt("a star"), timeout=10)
    assert again.seq == first.seq  # the server said `unchanged`, naming the frame already here


async def test_the_right_token_connects_and_a_wrong_or_missing_one_raises_auth_error(engine: Any) -> None:
    async with run_server(engine, token="s3cret-token") as srv:
        async with Client(srv.ws_url, token="s3cret-token") as client:
            frame = await client.wait_for(await client.send_prompt("a circle", size=SIZE))
            assert frame.width == SIZE[0]
        for token in ("wrong-token", None):
            with pytest.raises(AuthError) as info:
                await Client(srv.ws_url, token=token).connect()
            assert info.value.status == 403


async def test_a_server_error_code_is_a_typed_error_and_the_session_goes_on(server: Server) -> None:
    async with Client(server.ws_url) as client:
        bad = await client.send_prompt("a circle", size=(100, 100))
        with pytest.raises(ServerError) as info:
            await client.wait_for(bad)
        assert (info.value.code, info.value.seq) == ("out_of_range", bad)
        assert "100x100" in info.value.message
        assert client.session.size is None  # the rejected size would not be re-sent on a reconnect
        good = await client.send_prompt("a circle", size=SIZE)
        assert (await client.wait_for(good)).seq == good


async def test_an_unknown_protocol_version_is_a_protocol_error() -> None:
    async def future_server(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "hello", "protocol": 99}))
        await ws.wait_closed()

    async with serve(future_server, "127.0.0.1", 0) as srv:
        port = srv.sockets[0].getsockname()[1]
        with pytest.raises(ProtocolError, match="protocol 99"):
            await Client(f"ws://127.0.0.1:{port}/ws").connect()


async def test_an_unannounced_binary_message_is_a_protocol_error_that_ends_the_client() -> None:
    async def broken_server(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "hello", "protocol": 1, "session": {"id": "x", "seed": 1}}))
        await ws.recv()  # the client's prompt
        await ws.send(b"\xff\xd8\xff")  # an image with no frame header before it
        await ws.wait_closed()

    async with serve(broken_server, "127.0.0.1", 0) as srv:
        port = srv.sockets[0].getsockname()[1]
        async with Client(f"ws://127.0.0.1:{port}/ws") as client:
            await client.send_prompt("a circle")
            with pytest.raises(ProtocolError, match="binary"):
                await client.next_frame(timeout=10)
            assert client.state == "closed"
            with pytest.raises(ProtocolError):  # and every later call says so too
                await client.send_prompt("a square")


async def test_a_full_server_is_server_unavailable(engine: Any) -> None:
    async with run_server(engine, max_sessions=1) as srv, Client(srv.ws_url):
        with pytest.raises(ServerUnavailable) as info:
            await Client(srv.ws_url).connect()
        assert info.value.code == "server_full"


async def test_after_a_restart_it_reconnects_and_resends_the_last_prompt(engine: Any) -> None:
    client = Client(backoff_initial=0.05, backoff_max=0.5)
    try:
        async with run_server(engine) as first_server:
            port = first_server.port
            client.url = first_server.ws_url
            await client.connect()
            first = await client.wait_for(await client.send_prompt("a red circle", steps=1, size=SIZE))
        assert await client.wait_state("reconnecting", timeout=10) == "reconnecting"  # 1012, not idle

        # Restarted: the client reconnects by itself and re-sends text, seed, steps and size, so
        # the new session draws the very same picture, with nothing sent by the user.
        async with run_server(engine, port=port):
            resent = await client.next_frame(timeout=30)
        assert client.reconnects == 1 and resent.seq > first.seq
        assert resent.data == first.data

        # Down again: what is typed now is only recorded, and must not be lost.
        await client.wait_state("reconnecting", timeout=10)
        seq = await client.send_prompt("a blue square on the right")
        async with run_server(engine, port=port) as third_server:
            frame = await client.wait_for(seq, timeout=30)
            # The same update, sent by hand on a fresh connection, draws the same picture.
            ws, _ = await connect(third_server.ws_url)
            update = {"type": "prompt", "seq": 1, "text": "a blue square on the right",
                      "seed": first.seed, "steps": 1, "width": 64, "height": 64}  # fmt: skip
            await ws.send(json.dumps(update))
            [(_, reference)] = await frames_until(ws, 1)
            await ws.close()
    finally:
        await client.close()
    assert client.reconnects == 2
    assert frame.seq > seq and (frame.seed, frame.steps, frame.width) == (first.seed, 1, 64)
    assert frame.data == reference


async def test_after_an_idle_close_it_reconnects_on_the_next_send(engine: Any) -> None:
    async with run_server(engine, idle_timeout_s=0.3) as srv, Client(srv.ws_url) as client:
        first = await client.wait_for(await client.send_prompt("a green star", steps=1, size=SIZE))
        assert await client.wait_state("idle", timeout=10) == "idle"
        assert client.reconnects == 0 and not client.connected
        seq = await client.send_prompt("a green star at the top")
        frame = await client.wait_for(seq, timeout=30)
        assert client.state == "open" and client.reconnects == 1
        assert frame.seq > seq and (frame.seed, frame.steps) == (first.seed, 1)


async def test_close_ends_iteration(server: Server) -> None:
    client = Client(server.ws_url)
    await client.connect()
    seen: list[int] = []
    first = asyncio.Event()

    async def collect() -> None:
        async for frame in client:
            seen.append(frame.seq)
            first.set()

    task = asyncio.create_task(collect())
    seq = await client.send_prompt("a circle", size=SIZE)
    await asyncio.wait_for(first.wait(), 30)
    await client.close()
    await asyncio.wait_for(task, 10)  # the loop ended by itself, without an exception
    assert seen == [seq] and client.state == "closed"
