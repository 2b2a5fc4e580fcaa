"""Latest-wins scheduling: one pending slot per session, served round-robin.

There is deliberately no queue of prompts. Each session has one slot; a newer prompt
replaces the one waiting there, and the replaced job is counted as dropped, never run.
Sessions with a waiting job are served in turn, one job each per turn, so a fast typist
cannot push a slow one back: whoever typed gets the next free engine turn after everyone
already waiting.
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


@dataclass(frozen=True)
class Job:
    session_id: str
    seq: int
    request: RenderRequest
    received_at: float  # caller's clock, when the prompt arrived


class DropReason:
    SUPERSEDED = "superseded"  # replaced in its slot by a newer prompt before it started
    SESSION_CLOSED = "session_closed"  # its session went away before it started


class Scheduler:
    """Decides which job the engine runs next. Not thread-safe: one owner drives it."""

    def __init__(self) -> None:
        self._pending: dict[str, Job] = {}
        # Sessions whose pending job may start, in service order. A session whose job is
        # running is left out until that job finishes: its next job would supersede the
        # running one's picture anyway, and this keeps one session from taking two turns.
        self._ready: deque[str] = deque()
        self._running: dict[str, Job] = {}
        self.dropped: Counter[str] = Counter()
        self.submitted = 0

    def submit(self, job: Job) -> Job | None:
        """Put `job` in its session's slot. Returns the job it superseded, if any."""
        self.submitted += 1
        sid = job.session_id
        old = self._pending.get(sid)
        self._pending[sid] = job
        if old is not None:
            self.dropped[DropReason.SUPERSEDED] += 1
            return old  # the session keeps its place in the round
        if sid not in self._running:
            self._ready.append(sid)
        return None

    def next_job(self) -> Job | None:
        """The job to run now, or None when nothing may start."""
        if not self._ready:
            return None
        sid = self._ready.popleft()
        job = self._pending.pop(sid)
        self._running[sid] = job
        return job

    def finish(self, job: Job) -> None:
        """The engine is done with `job` (rendered or failed)."""
        if self._running.get(job.session_id) is job:
            del self._running[job.session_id]
            if job.session_id in self._pending:
                self._ready.append(job.session_id)  # to the back: it has just had its turn

    def remove_session(self, session_id: str) -> Job | None:
        """Forget a session. Its waiting job, if any, is dropped and returned."""
        job = self._pending.pop(session_id, None)
        if job is not None:
            self._ready.remove(session_id)
            self.dropped[DropReason.SESSION_CLOSED] += 1
        return job

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def running(self) -> int:
        return len(self._running)
