"""An engine with a fixed render time and flat-colour frames, for measuring the server around it.

Load, fairness, churn and fault figures are about the event loop, the scheduler and the
transports, not the model: this stands in for the model so those figures do not depend on
how fast this machine runs a UNet. It implements what the runtime calls on an Engine.
"""

from __future__ import annotations

import statistics
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np

from promptcast.core.limits import Limits
from promptcast.core.scheduler import RenderRequest
from promptcast.engine.pipeline import Rendered

FAULT = "fault"  # a prompt containing this word makes the render raise, as a device fault would


class FixedTimeEngine:
    def __init__(self, step_ms: float = 5.0, max_batch: int = 8, size: int = 64) -> None:
        self.step_s = step_ms / 1e3
        self.max_batch = max_batch
        self.limits = Limits(sizes=((size, size),), default_size=(size, size), steps=(1, 2),
                             default_steps=1)
        self.prompt_cache = SimpleNamespace(hits=0, misses=0)
        self.c = SimpleNamespace(vae=None, full_vae=None)
        self.faults = 0
        self.warming = None  # warm_up has no buckets to report
        # Between one batch's end and the next one's start: under a load that always has a job
        # waiting, the time the server's dispatch kept a GPU idle.
        self.idle_ms: deque[float] = deque(maxlen=100_000)
        self._last_end: float | None = None

    def load(self) -> None:
        pass

    def warm_up(self) -> None:
        pass

    def model_info(self) -> dict[str, object]:
        return {"name": "fixed-time fake engine", "preset": "fake", "family": "fake",
                "step_ms": self.step_s * 1e3, "batch_sizes": [self.max_batch],
                "idle_between_batches_ms": self._idle_summary()}

    def _idle_summary(self) -> dict[str, float]:
        idle = sorted(self.idle_ms)
        if not idle:
            return {}
        def at(q: float) -> float:
            return round(idle[min(len(idle) - 1, int(q * len(idle)))], 3)
        return {"n": len(idle), "mean": round(statistics.fmean(idle), 3), "p50": at(0.5),
                "p90": at(0.9), "p99": at(0.99), "max": round(idle[-1], 3)}

    def refine_steps(self, requested: int | None) -> int:
        return 2

    def render_batch(
        self, reqs: Sequence[RenderRequest], cancelled: Callable[[], bool] | None = None,
        jpeg: Sequence[bool] = (), video: Sequence[bool] = (),
    ) -> list[Rendered]:
        """Never encodes JPEGs nor makes I420 (the server's worker threads do), like the engine on
        a CPU."""
        start = time.perf_counter()
        if self._last_end is not None:
            self.idle_ms.append((start - self._last_end) * 1e3)
        try:
            time.sleep(self.step_s * reqs[0].steps)  # a batch costs the same at any size, as on a GPU
            if any(FAULT in r.text for r in reqs):
                self.faults += 1
                raise RuntimeError("injected engine fault")
            timings = {"text_encode_ms": 0.0, "denoise_ms": self.step_s * 1e3, "decode_ms": 0.0}
            return [Rendered(self._pixels(r), dict(timings), True, len(reqs)) for r in reqs]
        finally:
            self._last_end = time.perf_counter()

    def recover(self, exc: BaseException) -> None:
        pass

    def prefetch(self, req: RenderRequest) -> None:
        return None

    def render(self, req: RenderRequest, cancelled: Any = None, jpeg: bool = False,
               video: bool = False) -> Rendered:
        return self.render_batch([req], cancelled)[0]

    @staticmethod
    def _pixels(req: RenderRequest) -> np.ndarray:
        shade = zlib.crc32(req.text.encode()) % 256
        return np.full((req.height, req.width, 3), shade, dtype=np.uint8)
