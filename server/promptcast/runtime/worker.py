"""The one thread that owns the device.

All torch work (loading, warm-up, rendering) runs here, one call at a time, so CUDA state is
only ever touched from one thread and the event loop never blocks on the GPU. Once the model is
warm, the thread serves batches in a loop of its own (`serve`): it takes the next batch itself
the moment the last one is done, so the GPU never waits for the event loop to get a turn.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")

T = TypeVar("T")


class EngineThread:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="promptcast-engine")
        self._busy_since: float | None = None  # time.monotonic() when the call in flight began

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._timed, fn, *args)

    async def serve(self, wait: Callable[[], Item | None], work: Callable[[Item], None]) -> None:
        """On the thread, until `wait` returns None: `wait` for the next item (blocking while
        there is none), then `work` on it. Only `work` counts as busy (`busy_for`)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._serve, wait, work)

    def _serve(self, wait: Callable[[], Item | None], work: Callable[[Item], None]) -> None:
        while (item := wait()) is not None:
            self._timed(work, item)

    def _timed(self, fn: Callable[..., T], *args: object) -> T:
        self._busy_since = time.monotonic()
        try:
            return fn(*args)
        finally:
            self._busy_since = None

    def busy_for(self) -> float:
        """Seconds the call (or served item) in flight has been running; 0 when idle. A GPU step
        that never returns (a hung kernel, a deadlock) shows up here, for /readyz."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    def shutdown(self) -> None:
        """Wait for the call in flight (a GPU step is never abandoned half-way), then stop."""
        self._executor.shutdown(wait=True, cancel_futures=True)
