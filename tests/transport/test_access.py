"""Access and abuse limits against a real server: token, Origin, sessions per address, floods."""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from promptcast.engine.pipeline import Engine

from ..conftest import connect, http_get, recv_json, run_server

TOKEN = "s3cret-token_1"


async def refused_status(url: str, **kwargs: Any) -> int:
    with pytest.raises(InvalidStatus) as info:
        await ws_connect(url, **kwargs)
    return int(info.value.response.status_code)


async def test_the_token_is_required_and_accepted_three_ways(engine: Engine) -> None:
    async with run_server(engine, token=TOKEN, protect_metrics=True) as srv:
        assert await refused_status(srv.ws_url) == 403
        assert await refused_status(srv.ws_url, additional_headers={"Authorization": "Bearer nope"}) == 403
        assert await refused_status(srv.ws_url + "?token=nope") == 403
        by_header = await ws_connect(srv.ws_url, additional_headers={"Authorization": f"Bearer {TOKEN}"})
        by_query = await ws_connect(srv.ws_url + f"?token={TOKEN}")
        # As the page does it: the server picks "promptcast" and never echoes the token back.
        by_subprotocol = await ws_connect(srv.ws_url, subprotocols=["promptcast", f"bearer.{TOKEN}"])
        assert by_subprotocol.subprotocol == "promptcast"
        for ws in (by_header, by_query, by_subprotocol):
            assert json.loads(await ws.recv())["type"] == "hello"
            await ws.close()
        # /metrics is protected on request; health checks never are.
        assert (await http_get(srv.http_url + "/metrics"))[0] == 401
        status, body = await http_get(srv.http_url + "/metrics", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and "promptcast_sessions" in body
        assert (await http_get(srv.http_url + "/healthz"))[0] == 200
        assert (await http_get(srv.http_url + "/readyz"))[0] == 200


async def test_a_foreign_origin_is_refused_before_the_upgrade(engine: Engine) -> None:
    async with run_server(engine) as srv:
        assert await refused_status(srv.ws_url, origin="http://evil.example") == 403
        own, _ = await connect(srv.ws_url)  # no Origin: not a browser
        await own.close()
        same = await ws_connect(srv.ws_url, origin=srv.http_url)
        assert json.loads(await same.recv())["type"] == "hello"
        await same.close()
    async with run_server(engine, allowed_origins=("https://studio.example",)) as srv:
        studio = await ws_connect(srv.ws_url, origin="https://studio.example")
        assert json.loads(await studio.recv())["type"] == "hello"
        await studio.close()
        assert await refused_status(srv.ws_url, origin=srv.http_url) == 403


async def test_sessions_per_address_are_limited(engine: Engine) -> None:
    async with run_server(engine, max_sessions_per_ip=2) as srv:
        first, _ = await connect(srv.ws_url)
        second, _ = await connect(srv.ws_url)
        third = await ws_connect(srv.ws_url)
        err = await recv_json(third)
        assert err["code"] == "server_full" and "127.0.0.1" in err["message"]
        with pytest.raises(ConnectionClosed) as info:
            await third.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1013
        await second.close()
        await first.close()


async def test_a_flood_gets_rate_limited_then_closed_and_others_are_served(engine: Engine) -> None:
    async with run_server(engine, max_messages_per_s=5, message_burst=10) as srv:
        calm, hello = await connect(srv.ws_url)
        assert hello["limits"]["max_messages_per_s"] == 5 and hello["limits"]["message_burst"] == 10
        flood, _ = await connect(srv.ws_url)
        for seq in range(1, 200):
            try:
                await flood.send(json.dumps({"type": "prompt", "seq": seq, "text": "x" * (seq % 50)}))
            except ConnectionClosed:
                break
        codes = []
        with pytest.raises(ConnectionClosed) as info:
            while True:
                msg = await recv_json(flood)
                if msg["type"] == "error":
                    codes.append(msg["code"])
                elif msg["type"] == "frame":
                    await flood.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008
        assert codes.count("rate_limited") >= 1
        await calm.send(json.dumps({"type": "prompt", "seq": 1, "text": "a calm cat"}))
        header = await recv_json(calm)
        assert header["type"] == "frame" and header["seq"] == 1
        await calm.close()
