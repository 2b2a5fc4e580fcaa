"""A synchronous wrapper for plugin hosts that have no event loop of their own (Krita, Blender):
the async Client runs on an event loop in a daemon thread, and each method waits for it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from .client import DEFAULT_URL, Client
from .frame import Frame

T = TypeVar("T")


class SyncClient:
    """The Client's API, blocking. Every method is safe to call from any thread (the host's UI
    thread, typically). From a UI timer, `poll_frame()` returns the newest frame without
    blocking; `wait_for(seq)` blocks until the frame for an update arrives.

    ```
    with SyncClient("ws://127.0.0.1:8000/ws", token="...") as pc:
        frame = pc.wait_for(pc.send_prompt("a red circle"))
    ```
    """

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="promptcast-client", daemon=True)
        self._thread.start()

        async def make() -> Client:  # built on its loop, where its asyncio primitives will live
            return Client(url, token, **options)

        self.client = self._call(make())

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def connect(self) -> dict[str, Any]:
        return self._call(self.client.connect())

    def close(self) -> None:
        """Close the connection and stop the loop's thread. The client cannot be reused."""
        if not self._loop.is_running():
            return
        try:
            self._call(self.client.close(), timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def __enter__(self) -> SyncClient:
        try:
            self.connect()
        except BaseException:
            self.close()  # or the loop's thread would outlive the failed `with`
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def hello(self) -> dict[str, Any] | None:
        return self.client.hello

    @property
    def state(self) -> str:
        return self.client.state

    def send_prompt(
        self,
        text: str | None = None,
        *,
        seed: int | None = None,
        steps: int | None = None,
        size: tuple[int, int] | None = None,
        strength: float | None = None,
    ) -> int:
        return self._call(self.client.send_prompt(text, seed=seed, steps=steps, size=size, strength=strength))

    def set_seed(self, seed: int) -> int:
        return self._call(self.client.set_seed(seed))

    def set_steps(self, steps: int) -> int:
        return self._call(self.client.set_steps(steps))

    def set_size(self, width: int, height: int) -> int:
        return self._call(self.client.set_size(width, height))

    def send_image(self, data: bytes, *, format: str | None = None, strength: float | None = None) -> int:
        return self._call(self.client.send_image(data, format=format, strength=strength))

    def clear_image(self) -> int:
        return self._call(self.client.clear_image())

    def next_frame(self, timeout: float | None = None) -> Frame:
        return self._call(self.client.next_frame(timeout))

    def wait_for(self, seq: int, timeout: float | None = 60.0) -> Frame:
        return self._call(self.client.wait_for(seq, timeout))

    def poll_frame(self) -> Frame | None:
        """The newest frame that arrived since the last call, or None; never blocks on the
        network (it runs on the client's loop, which touches no socket while doing it)."""

        async def poll() -> Frame | None:
            return self.client.poll_frame()

        return self._call(poll())
