"""Latest-wins and fairness, driven by a fake clock: no sockets, no threads, no torch."""

from __future__ import annotations

import dataclasses
import heapq
from dataclasses import dataclass, field

from promptcast.core.scheduler import DropReason, Job, RenderRequest, Scheduler


def job(session: str, seq: int, at: float = 0.0) -> Job:
    return Job(session, seq, RenderRequest(f"{session}{seq}", 0, 1, 64, 64), at)


def test_newer_job_replaces_pending_one_which_never_runs() -> None:
    s = Scheduler()
    assert s.submit(job("a", 1)) is None
    assert s.submit(job("a", 2)) == job("a", 1)
    assert s.submit(job("a", 3)) == job("a", 2)
    assert s.next_job() == job("a", 3)
    assert s.next_job() is None
    assert s.dropped == {DropReason.SUPERSEDED: 2}
    assert s.submitted == 3


def test_a_session_has_at_most_one_job_running() -> None:
    s = Scheduler()
    s.submit(job("a", 1))
    first = s.next_job()
    assert first is not None
    s.submit(job("a", 2))
    assert s.next_job() is None  # a's next job waits for its running one
    s.finish(first)
    assert s.next_job() == job("a", 2)


def test_round_robin_between_sessions() -> None:
    s = Scheduler()
    for name in "abc":
        s.submit(job(name, 1))
    order = []
    for _ in range(3):
        j = s.next_job()
        assert j is not None
        order.append(j.session_id)
        s.submit(job(j.session_id, j.seq + 1))  # each types again while being served
        s.finish(j)
    assert order == ["a", "b", "c"]
    # a, having been served first, comes round again first.
    nxt = s.next_job()
    assert nxt is not None and nxt.session_id == "a"


def test_replacing_a_pending_job_keeps_the_sessions_place() -> None:
    s = Scheduler()
    s.submit(job("a", 1))
    s.submit(job("b", 1))
    s.submit(job("a", 2))  # a typed again: still first in line
    nxt = s.next_job()
    assert nxt == job("a", 2)


def test_removed_session_loses_its_pending_job() -> None:
    s = Scheduler()
    s.submit(job("a", 1))
    s.submit(job("b", 1))
    assert s.remove_session("a") == job("a", 1)
    assert s.next_job() == job("b", 1)
    assert s.next_job() is None
    assert s.dropped == {DropReason.SESSION_CLOSED: 1}
    assert s.remove_session("nobody") is None


def test_finishing_a_job_of_a_removed_session_is_harmless() -> None:
    s = Scheduler()
    s.submit(job("a", 1))
    running = s.next_job()
    assert running is not None
    s.remove_session("a")
    s.finish(running)
    assert s.next_job() is None and s.running == 0


def sized(session: str, seq: int, size: int, image: bytes | None = None) -> Job:
    return Job(session, seq, RenderRequest(f"{session}{seq}", 0, 1, size, size, image), 0.0)


def test_sessions_of_one_shape_run_as_one_batch_in_round_order() -> None:
    s = Scheduler()
    for name, size in (("a", 64), ("b", 128), ("c", 64), ("d", 64), ("e", 64)):
        s.submit(sized(name, 1, size))
    batch = s.next_batch(3)
    assert [j.session_id for j in batch] == ["a", "c", "d"]  # b's shape differs; the cap is 3
    assert s.running == 3
    assert [j.session_id for j in s.next_batch(8)] == ["b"]  # b's turn: its own shape
    assert [j.session_id for j in s.next_batch(8)] == ["e"]
    # Sessions in a running batch wait for it, like a session whose single job runs.
    s.submit(sized("a", 2, 64))
    assert s.next_batch(8) == []
    for j in batch:
        s.finish(j)
    assert s.next_batch(8) == [sized("a", 2, 64)]


def test_img2img_and_refines_are_not_batched_with_updates() -> None:
    s = Scheduler()
    s.submit(sized("a", 1, 64, image=b"jpeg"))
    s.submit(sized("b", 1, 64, image=b"jpeg"))
    s.submit(dataclasses.replace(sized("c", 1, 64), refined=True))
    s.submit(sized("d", 1, 64))
    assert [j.session_id for j in s.next_batch(8)] == ["a"]  # img2img renders alone
    assert [j.session_id for j in s.next_batch(8)] == ["b"]
    assert [j.session_id for j in s.next_batch(8)] == ["d"]  # updates before refines
    assert [j.session_id for j in s.next_batch(8)] == ["c"]


# ------------------------------------------------------------ simulation with a fake clock


@dataclass(order=True)
class Event:
    at: float
    order: int
    session: str = field(compare=False)
    seq: int = field(compare=False)


def simulate(typing: dict[str, list[float]], render_s: float) -> tuple[Scheduler, dict[str, list]]:
    """Typists submit at the given times; one engine renders a job in `render_s`.
    Returns the scheduler and, per session, (seq, submitted_at, started_at) of jobs run."""
    s = Scheduler()
    events: list[Event] = []
    n = 0
    for name, times in typing.items():
        for i, t in enumerate(times, start=1):
            heapq.heappush(events, Event(t, n, name, i))
            n += 1
    ran: dict[str, list] = {name: [] for name in typing}
    clock, busy_until, running = 0.0, 0.0, None
    while events or s.pending or running:
        next_typing = events[0].at if events else float("inf")
        if running is not None and busy_until <= next_typing:
            clock = busy_until
            s.finish(running)
            running = None
        elif events:
            ev = heapq.heappop(events)
            clock = ev.at
            s.submit(Job(ev.session, ev.seq, RenderRequest(str(ev.seq), 0, 1, 64, 64), clock))
        if running is None:
            j = s.next_job()
            if j is not None:
                running, busy_until = j, clock + render_s
                ran[j.session_id].append((j.seq, j.received_at, clock))
    return s, ran


def test_burst_renders_few_frames_and_always_the_last() -> None:
    burst = [i * 0.003 for i in range(35)]  # 35 keystrokes in about 100 ms
    s, ran = simulate({"a": burst}, render_s=0.040)
    seqs = [seq for seq, _, _ in ran["a"]]
    assert seqs[-1] == 35
    assert len(seqs) <= 5
    assert s.dropped[DropReason.SUPERSEDED] == 35 - len(seqs)
    assert seqs == sorted(seqs)


def test_fast_typist_cannot_starve_a_slow_one() -> None:
    fast = [i * 0.001 for i in range(1000)]  # 1000 keystrokes a second for a second
    slow = [0.05 + i * 0.2 for i in range(5)]
    _, ran = simulate({"fast": fast, "slow": slow}, render_s=0.030)
    # Every slow keystroke waits at most one other job (the fast typist's) before its own.
    assert [seq for seq, _, _ in ran["slow"]] == [1, 2, 3, 4, 5]
    for _, submitted_at, started_at in ran["slow"]:
        assert started_at - submitted_at <= 0.030 + 1e-9
    assert ran["fast"][-1][0] == 1000


def refine(session: str, seq: int) -> Job:
    return Job(session, seq, RenderRequest(f"{session}{seq}", 0, 4, 64, 64), 0.0, refined=True)


def test_refines_run_only_when_no_update_waits() -> None:
    s = Scheduler()
    s.submit(refine("a", 1))
    s.submit(job("b", 1))
    assert s.has_update_waiting()
    assert s.next_job() == job("b", 1)  # b's update first, though a's refine came first
    assert not s.has_update_waiting()
    assert s.next_job() == refine("a", 1)


def test_an_update_replaces_a_waiting_refine() -> None:
    s = Scheduler()
    s.submit(refine("a", 1))
    assert s.submit(job("a", 2)) == refine("a", 1)
    assert s.next_job() == job("a", 2)
    assert s.next_job() is None
    assert s.dropped == {DropReason.REFINE_CANCELLED: 1}


def test_preempted_refine_is_counted_and_frees_the_session() -> None:
    s = Scheduler()
    s.submit(refine("a", 1))
    running = s.next_job()
    assert running is not None
    s.submit(job("a", 2))
    assert s.has_update_waiting()  # a's own update waits behind its running refine
    s.finish(running, preempted=True)
    assert s.next_job() == job("a", 2)
    assert s.dropped == {DropReason.REFINE_PREEMPTED: 1}


def test_removing_a_session_whose_job_runs_and_another_waits() -> None:
    s = Scheduler()
    s.submit(job("a", 1))
    running = s.next_job()
    s.submit(job("a", 2))
    assert s.remove_session("a") == job("a", 2)
    assert running is not None
    s.finish(running)
    assert s.next_job() is None
