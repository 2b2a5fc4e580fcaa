"""The one thread that owns the device.

All torch work (loading, warm-up, rendering) is submitted here, one call at a time, so CUDA
state is only ever touched from one thread and the event loop never blocks on the GPU.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class EngineThread:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="promptcast-engine")
        self._busy_since: float | None = None  # time.monotonic() when the call in flight began

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._timed, fn, *args)

    def _timed(self, fn: Callable[..., T], *args: object) -> T:
        self._busy_since = time.monotonic()
        try:
            return fn(*args)
        finally:
            self._busy_since = None

    def busy_for(self) -> float:
        """Seconds the call in flight has been running; 0 when idle. A GPU step that never
        returns (a hung kernel, a deadlock) shows up here, for /readyz."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    def shutdown(self) -> None:
        """Wait for the call in flight (a GPU step is never abandoned half-way), then stop."""
        self._executor.shutdown(wait=True, cancel_futures=True)
