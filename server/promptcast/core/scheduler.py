"""Latest-wins scheduling: one pending slot per session, served round-robin.

There is deliberately no queue of prompts. Each session has one slot; a newer prompt
replaces the one waiting there, and the replaced job is counted as dropped, never run.
Sessions with a waiting job are served in turn, one job each per turn, so a fast typist
cannot push a slow one back: whoever typed gets the next free engine turn after everyone
already waiting. Refine jobs (a better frame for an idle session) run only when no session
has an update waiting: they use spare engine time and never delay a keystroke's frame.

Jobs of different sessions that render alike (same size, steps and decoder; see
`RenderRequest.batch_key`) may run as one batch: the session whose turn it is picks the
shape, and other waiting sessions of the same shape ride along, in their round order. That
only ever moves a job earlier, so fairness holds.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass


@dataclass(frozen=True)
class RenderRequest:
    """Everything that determines the picture. Equal requests give equal pictures."""

    text: str
    seed: int
    steps: int
    width: int
    height: int
    image: bytes | None = None  # img2img: the init image as the client sent it (JPEG or PNG)
    strength: float = 1.0  # img2img: how far from the init image (1.0: ignore it entirely)
    full_vae: bool = False  # decode with the full autoencoder (refined frames may)

    def batch_key(self) -> tuple[object, ...] | None:
        """Requests with equal keys can be rendered as one batch; None: only alone. img2img
        renders alone, since its strength changes the timesteps each request runs."""
        if self.image is not None:
            return None
        return (self.width, self.height, self.steps, self.full_vae)


@dataclass(frozen=True)
class Job:
    session_id: str
    seq: int
    request: RenderRequest
    received_at: float  # caller's clock, when the prompt arrived
    refined: bool = False  # a higher-quality re-render of `seq`, made when the session went idle


class DropReason:
    SUPERSEDED = "superseded"  # replaced in its slot by a newer prompt before it started
    SESSION_CLOSED = "session_closed"  # its session went away before it started
    REFINE_CANCELLED = "refine_cancelled"  # a refine replaced by a new update before it started
    REFINE_PREEMPTED = "refine_preempted"  # a running refine stopped because an update waited


class Scheduler:
    """Decides which job the engine runs next. Not thread-safe: one owner drives it."""

    def __init__(self) -> None:
        self._pending: dict[str, Job] = {}
        # Sessions whose pending job may start, in service order. A session whose job is
        # running is left out until that job finishes: its next job would supersede the
        # running one's picture anyway, and this keeps one session from taking two turns.
        self._ready: deque[str] = deque()
        self._ready_refine: deque[str] = deque()  # the same, for sessions whose job is a refine
        self._running: dict[str, Job] = {}
        self.dropped: Counter[str] = Counter()
        self.submitted = 0

    def submit(self, job: Job) -> Job | None:
        """Put `job` in its session's slot. Returns the job it superseded, if any."""
        self.submitted += 1
        sid = job.session_id
        old = self._pending.get(sid)
        self._pending[sid] = job
        if old is not None and old.refined == job.refined:
            self.dropped[DropReason.SUPERSEDED] += 1
            return old  # the session keeps its place in the round
        if old is not None:  # an update replacing a waiting refine
            self.dropped[DropReason.REFINE_CANCELLED] += 1
            self._ready_refine.remove(sid)
        if sid not in self._running:
            self._queue_for(job).append(sid)
        return old

    def _queue_for(self, job: Job) -> deque[str]:
        return self._ready_refine if job.refined else self._ready

    def next_job(self) -> Job | None:
        """The job to run now, or None when nothing may start."""
        batch = self.next_batch(1)
        return batch[0] if batch else None

    def next_batch(self, max_size: int) -> list[Job]:
        """Up to `max_size` jobs to run now as one batch (empty when nothing may start): the
        job whose turn it is, then waiting jobs of other sessions that render alike."""
        queue = self._ready or self._ready_refine
        if not queue:
            return []
        batch = [self._start(queue.popleft())]
        key = batch[0].request.batch_key()
        if key is None:
            return batch
        for sid in list(queue):
            if len(batch) >= max_size:
                break
            if self._pending[sid].request.batch_key() == key:
                queue.remove(sid)
                batch.append(self._start(sid))
        return batch

    def _start(self, sid: str) -> Job:
        job = self._pending.pop(sid)
        self._running[sid] = job
        return job

    def finish(self, job: Job, preempted: bool = False) -> None:
        """The engine is done with `job`: rendered, failed, or (a refine) stopped early."""
        if preempted:
            self.dropped[DropReason.REFINE_PREEMPTED] += 1
        if self._running.get(job.session_id) is job:
            del self._running[job.session_id]
            waiting = self._pending.get(job.session_id)
            if waiting is not None:  # to the back: it has just had its turn
                self._queue_for(waiting).append(job.session_id)

    def remove_session(self, session_id: str) -> Job | None:
        """Forget a session. Its waiting job, if any, is dropped and returned."""
        job = self._pending.pop(session_id, None)
        if job is not None:
            queue = self._queue_for(job)
            if session_id in queue:  # not there while its previous job runs
                queue.remove(session_id)
            self.dropped[DropReason.SESSION_CLOSED] += 1
        return job

    def has_update_waiting(self) -> bool:
        """Whether an update (not a refine) waits, of any session: a running refine gives way."""
        return any(not job.refined for job in self._pending.values())

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def running(self) -> int:
        return len(self._running)
