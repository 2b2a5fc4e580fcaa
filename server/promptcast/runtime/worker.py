"""The one thread that owns the device.

All torch work (loading, warm-up, rendering) is submitted here, one call at a time, so CUDA
state is only ever touched from one thread and the event loop never blocks on the GPU.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class EngineThread:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="promptcast-engine")

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        """Wait for the call in flight (a GPU step is never abandoned half-way), then stop."""
        self._executor.shutdown(wait=True, cancel_futures=True)
