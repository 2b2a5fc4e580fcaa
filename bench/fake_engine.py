"""An engine with a fixed render time and flat-colour frames, for measuring the server around it.

Load, fairness, churn and fault figures are about the event loop, the scheduler and the
transports, not the model: this stands in for the model so those figures do not depend on
how fast this machine runs a UNet. It implements what the runtime calls on an Engine.
"""

from __future__ import annotations

import time
import zlib
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

    def load(self) -> None:
        pass

    def warm_up(self) -> None:
        pass

    def model_info(self) -> dict[str, object]:
        return {"name": "fixed-time fake engine", "preset": "fake", "family": "fake",
                "step_ms": self.step_s * 1e3, "batch_sizes": [self.max_batch]}

    def refine_steps(self, requested: int | None) -> int:
        return 2

    def render_batch(
        self, reqs: Sequence[RenderRequest], cancelled: Callable[[], bool] | None = None,
        jpeg: Sequence[bool] = (),
    ) -> list[Rendered]:
        """Never encodes JPEGs (the server's worker threads do), like the engine on a CPU."""
        time.sleep(self.step_s * reqs[0].steps)  # one batch costs the same at any size, as on a GPU
        if any(FAULT in r.text for r in reqs):
            self.faults += 1
            raise RuntimeError("injected engine fault")
        timings = {"text_encode_ms": 0.0, "denoise_ms": self.step_s * 1e3, "decode_ms": 0.0}
        return [Rendered(self._pixels(r), dict(timings), True, len(reqs)) for r in reqs]

    def recover(self, exc: BaseException) -> None:
        pass

    def render(self, req: RenderRequest, cancelled: Any = None, jpeg: bool = False) -> Rendered:
        return self.render_batch([req], cancelled)[0]

    @staticmethod
    def _pixels(req: RenderRequest) -> np.ndarray:
        shade = zlib.crc32(req.text.encode()) % 256
        return np.full((req.height, req.width, 3), shade, dtype=np.uint8)
