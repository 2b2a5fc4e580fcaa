from collections import Counter
from dataclasses import dataclass

from promptcast.core.outbox import FrameDropReason, FrameSlot


@dataclass(frozen=True)
class F:
    seq: int
    refined: bool = False


def test_newer_frame_replaces_unsent_one() -> None:
    drops: Counter[str] = Counter()
    slot: FrameSlot[F] = FrameSlot(drops)
    assert slot.put(F(1)) is None
    assert slot.put(F(2)) == F(1)
    assert slot.take() == F(2)
    assert slot.take() is None
    assert drops == {FrameDropReason.SUPERSEDED: 1}


def test_frame_older_than_one_sent_is_never_sent() -> None:
    drops: Counter[str] = Counter()
    slot: FrameSlot[F] = FrameSlot(drops)
    slot.put(F(5))
    assert slot.take() == F(5)
    assert slot.put(F(4)) == F(4)
    assert slot.put(F(3)) == F(3)
    slot.put(F(7))
    assert slot.put(F(6)) == F(6)  # older than the one waiting
    assert slot.take() == F(7)
    assert drops == {FrameDropReason.STALE: 3}


def test_one_counter_totals_many_slots_and_close_counts() -> None:
    drops: Counter[str] = Counter()
    a: FrameSlot[F] = FrameSlot(drops)
    b: FrameSlot[F] = FrameSlot(drops)
    a.put(F(1))
    a.put(F(2))
    b.put(F(1))
    b.close()
    assert not b and b.take() is None
    assert drops == {FrameDropReason.SUPERSEDED: 1, FrameDropReason.SESSION_CLOSED: 1}


def test_refined_frame_of_a_seq_follows_its_first_frame() -> None:
    drops: Counter[str] = Counter()
    slot: FrameSlot[F] = FrameSlot(drops)
    slot.put(F(3))
    assert slot.take() == F(3)
    assert slot.put(F(3, refined=True)) is None  # same seq, better picture: sent
    assert slot.take() == F(3, refined=True)
    assert slot.put(F(3, refined=True)) == F(3, refined=True)  # never twice
    slot.put(F(4))
    assert slot.put(F(3, refined=True)) == F(3, refined=True)  # older than what waits
    assert drops == {FrameDropReason.STALE: 2}
