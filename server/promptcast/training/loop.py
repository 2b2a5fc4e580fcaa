"""A resumable training loop: checkpoints, progress lines and a finished marker per stage.

A stage is a step function plus the objects whose state it changes (modules, optimisers, EMA
copies). Its checkpoint holds their state dicts, the step count and the random generators'
states, so a resumed run continues the same sequence of batches as an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import torch


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


def _rng_state(rng: random.Random) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": rng.getstate()}


def run_stage(
    name: str,
    work: Path,
    steps: int,
    state: dict[str, Stateful],
    step: Callable[[int], float],
    rng: random.Random,
    *,
    save_every_s: float = 120.0,
    log_every: int = 25,
    log: Callable[[str], None] = print,
) -> None:
    """Run `step(i)` for i in [start, steps), where start comes from `work/name.pt` if a
    previous run left one. `step` returns the batch loss, averaged into the progress lines."""
    path = work / f"{name}.pt"
    start = 0
    if path.exists():
        saved = torch.load(path, weights_only=False)
        for key, obj in state.items():
            obj.load_state_dict(saved["state"][key])
        torch.set_rng_state(saved["rng"]["torch"])
        rng.setstate(saved["rng"]["python"])
        start = saved["step"]
        log(f"[{name}] resumed at step {start}/{steps}")
    if start >= steps:
        return

    def save(done: int) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save({"step": done, "state": {k: o.state_dict() for k, o in state.items()},
                    "rng": _rng_state(rng)}, tmp)
        tmp.replace(path)  # never a half-written checkpoint

    began = last_save = time.monotonic()
    losses: list[float] = []
    for i in range(start, steps):
        losses.append(step(i))
        done = i + 1
        now = time.monotonic()
        if done % log_every == 0 or done == steps:
            rate = (done - start) / (now - began)
            eta = (steps - done) / rate
            log(f"[{name}] {done}/{steps} loss {sum(losses) / len(losses):.4f} "
                f"{rate:.2f} it/s, {eta / 60:.1f} min left")
            losses.clear()
        if now - last_save > save_every_s or done == steps:
            save(done)
            last_save = now


def descend(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
            schedule: torch.optim.lr_scheduler.LRScheduler,
            clip: Iterable[torch.nn.Parameter] | None = None) -> float:
    """One optimiser step on `loss` (gradients clipped to norm 1 over `clip`, if given), one
    learning-rate step. Returns the loss, for the progress lines."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip, 1.0)
    optimizer.step()
    schedule.step()
    return loss.item()


class EMA:
    """An exponential moving average of a module's weights (a frozen copy, updated in place)."""

    def __init__(self, module: torch.nn.Module, decay: float, warmup: bool = True) -> None:
        self.module = copy.deepcopy(module).requires_grad_(False)
        self.decay = decay
        self.warmup = warmup  # a short average at first: early weights are not worth keeping
        self.updates = 0

    @torch.no_grad()
    def update(self, source: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        for avg, new in zip(self.module.parameters(), source.parameters(), strict=True):
            avg.lerp_(new, 1.0 - decay)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int, warmup: int,
                  floor: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then a cosine down to `floor` of the peak rate."""

    def factor(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        progress = (i - warmup) / max(1, steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
