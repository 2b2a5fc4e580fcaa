"""Shared fixtures: one loaded embedded engine, and real uvicorn servers on 127.0.0.1."""
# ruff: noqa: E402  (the environment must be set before the imports below)

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Tests never touch the network. huggingface_hub and diffusers read these when imported, so
# they are set before anything imports them; the cache is filled by the `hub_cache` fixture.
os.environ["HF_HUB_OFFLINE"] = "1"
HUB_CACHE = Path(tempfile.mkdtemp(prefix="promptcast-hub-cache-"))
os.environ["HF_HUB_CACHE"] = str(HUB_CACHE)

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

try:
    import torch
except ImportError:  # the core tests run without torch
    torch = None  # type: ignore[assignment]
else:
    # Two threads on a shared 2-core machine ran the tiny models 80-120x slower than one.
    torch.set_num_threads(1)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(HUB_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def hub_cache() -> Path:
    """The Hugging Face cache, holding tiny models under the real repo ids of every preset."""
    from tests.engine.hub_fixtures import build_hub_cache

    if not (HUB_CACHE / "models--madebyollin--taesd").exists():
        build_hub_cache(HUB_CACHE)
    return HUB_CACHE


@pytest.fixture(scope="session")
def engine() -> Iterator[Any]:
    """The embedded default model, loaded and warmed once for the whole run."""
    from promptcast.config import EngineConfig
    from promptcast.engine.pipeline import Engine

    eng = Engine(EngineConfig())
    eng.load()
    eng.warm_up()
    yield eng


@pytest.fixture(scope="session")
def device_jpeg_engine() -> Iterator[Any]:
    """The embedded model with `--jpeg-encode device`: the engine itself encodes the frames a
    client will see as JPEGs (on a GPU with nvJPEG; here, on the CPU, in the engine's thread).
    `asked` records, per rendered row, the prompt and whether its JPEG was asked for."""
    from promptcast.config import EngineConfig
    from promptcast.engine.pipeline import Engine

    class RecordingEngine(Engine):
        asked: ClassVar[list[tuple[str, bool]]] = []

        def render_batch(self, reqs: Any, cancelled: Any = None, jpeg: Any = (), video: Any = ()
                         ) -> Any:
            self.asked.extend((r.text, i < len(jpeg) and jpeg[i]) for i, r in enumerate(reqs))
            return super().render_batch(reqs, cancelled, jpeg, video)

    eng = RecordingEngine(EngineConfig(jpeg_encode="device"))
    eng.load()
    eng.warm_up()
    yield eng


@dataclass
class Server:
    host: str
    port: int
    app: Any
    uvicorn: Any = None  # the uvicorn.Server

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime


@contextlib.asynccontextmanager
async def run_server(engine: Any, wait_ready: bool = True, **config_overrides: Any
                     ) -> AsyncIterator[Server]:
    """A real uvicorn serving create_app(config, engine) on 127.0.0.1, on a free port; yielded
    once the model is ready unless `wait_ready` is False."""
    import uvicorn

    from promptcast.app import create_app
    from promptcast.cli import uvicorn_config
    from promptcast.config import Config

    # Refining is off unless a test asks for it, so frames arrive only for what tests send.
    config = dataclasses.replace(
        Config(host="127.0.0.1", port=0, log_level="warning", refine_after_ms=0), **config_overrides
    )
    app = create_app(config, engine)
    server = uvicorn.Server(uvicorn_config(app, config))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        while wait_ready and not app.state.runtime.ready:
            await asyncio.sleep(0.01)
        yield Server("127.0.0.1", port, app, server)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def server(engine: Any) -> AsyncIterator[Server]:
    async with run_server(engine) as srv:
        yield srv


async def recv_json(ws: Any, timeout: float = 30) -> dict[str, Any]:
    """The next text message, as JSON (binary messages are not expected here)."""
    raw = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(raw, str), f"expected a text message, got {len(raw)} bytes"
    msg: dict[str, Any] = json.loads(raw)
    return msg


async def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """GET from a thread: the server under test runs on this test's event loop."""
    return await asyncio.to_thread(_get, url, headers or {})


def _get(url: str, headers: dict[str, str]) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def connect(url: str) -> Any:
    """A websockets client that has read its hello; returns (ws, hello)."""
    from websockets.asyncio.client import connect as ws_connect

    ws = await ws_connect(url, max_size=None)
    hello = await recv_json(ws)
    assert hello["type"] == "hello", hello
    return ws, hello


async def frames_until(ws: Any, last_seq: int, timeout: float = 60) -> list[tuple[dict[str, Any], bytes]]:
    """Collect (header, image) pairs until the frame for `last_seq` arrives. Other messages are
    ignored; a frame header must be followed directly by its image."""
    frames: list[tuple[dict[str, Any], bytes]] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        msg = await recv_json(ws, max(remaining, 0.01))
        if msg["type"] != "frame":
            continue
        image = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(image, bytes), "a frame header must be followed by its binary image"
        frames.append((msg, image))
        if msg["seq"] >= last_seq:
            return frames
