"""StageClock: a frame's stage times, from the wall clock on the CPU and from stream events on
CUDA (exercised here with a stand-in for torch.cuda.Event, since this machine has no GPU)."""

from __future__ import annotations

import time
from typing import ClassVar

import pytest
import torch

from promptcast.engine.stage_clock import StageClock


def test_on_the_cpu_stages_are_wall_clock_intervals() -> None:
    clock = StageClock(torch.device("cpu"))
    clock.mark()
    time.sleep(0.02)
    clock.mark()
    clock.mark()
    first, second = clock.stages_ms()
    assert first >= 20 and 0 <= second < 20


class FakeEvent:
    """What StageClock uses of torch.cuda.Event: record on the stream, wait, elapsed time."""

    recorded: ClassVar[list[FakeEvent]] = []
    synchronized: ClassVar[list[FakeEvent]] = []

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing, "an event without timing cannot give elapsed_time"
        self.at: float | None = None

    def record(self) -> None:
        self.at = 10.0 * len(FakeEvent.recorded)  # the device reaches each 10 ms after the last
        FakeEvent.recorded.append(self)

    def synchronize(self) -> None:
        FakeEvent.synchronized.append(self)

    def elapsed_time(self, end: FakeEvent) -> float:
        # As on a stream: waiting for an event means every event recorded before it was reached.
        reached = max((FakeEvent.recorded.index(e) for e in FakeEvent.synchronized), default=-1)
        assert FakeEvent.recorded.index(end) <= reached, "read before the device reached it"
        assert self.at is not None and end.at is not None
        return end.at - self.at


def test_on_cuda_stages_are_events_read_once_after_the_last(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    clock = StageClock(torch.device("cuda"))
    for _ in range(4):
        clock.mark()
    assert FakeEvent.synchronized == []  # marking never waits for the device
    assert clock.stages_ms() == [10.0, 10.0, 10.0]
    assert FakeEvent.synchronized == [FakeEvent.recorded[-1]]  # one wait, for the last stage
