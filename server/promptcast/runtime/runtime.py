"""The loop that feeds the engine from the scheduler and hands frames to the transports.

Everything here runs on the event loop except the engine's side (on the engine thread) and JPEG
encoding (on a helper thread, so the engine can start the next frame meanwhile). The engine
thread takes its next batch from the scheduler itself, as soon as the last batch is rendered,
and hands the frames to the loop: the GPU never waits for the loop to get a turn (with many
clients the loop is busy for milliseconds at a time). So the scheduler is shared, behind a
lock; every other core object (sessions, frame slots, viewers) is only touched from the loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np

from promptcast import __version__
from promptcast.config import Config
from promptcast.core.ice import parse_ice_server
from promptcast.core.limits import SEED_MAX, Limits
from promptcast.core.messages import (
    ErrorCode,
    ErrorMessage,
    FrameHeader,
    Hello,
    Notice,
    NoticeCode,
    ServerMessage,
    serialise,
)
from promptcast.core.outbox import FrameDropReason, FrameSlot
from promptcast.core.scheduler import Job, Scheduler
from promptcast.core.session import (
    Action,
    Close,
    RefinePolicy,
    Reply,
    Session,
    StartWebRTC,
    Submit,
)
from promptcast.core.viewers import Feed, FeedKey, Refusal, Viewer, Viewers
from promptcast.engine.image import BadImage, decode_image, encode_jpeg
from promptcast.engine.pipeline import Engine, RenderCancelled, Rendered
from promptcast.runtime.metrics import Metrics
from promptcast.runtime.worker import EngineThread

log = logging.getLogger(__name__)

# Control messages (errors, notices) a client has not read yet. A client that floods bad
# input and never reads must not grow server memory; the oldest notices go first.
CONTROL_BACKLOG = 64
# At stop, how long the runtime's own tasks (deliveries, peer closes) get to finish.
TASKS_AT_STOP_S = 1.0


class ServerFull(Exception):
    pass


@dataclass(frozen=True)
class EncodedFrame:
    seq: int
    job: Job
    jpeg: bytes
    timings: dict[str, float]  # ms, everything but the total

    @property
    def refined(self) -> bool:
        return self.job.refined


# A video frame's metadata (its frame header), made when the frame is sent, which counts it.
Describe = Callable[[], dict[str, Any]]


class VideoSink(Protocol):
    """Where a session's frames go instead of the WebSocket once `active` (WebRTC video)."""

    active: bool

    def offer(self, pixels: np.ndarray, describe: Describe, yuv: np.ndarray | None = None,
              first: bool = False) -> bool:
        """The newest frame: (H, W, 3) uint8 RGB, and its I420 planes where the engine made
        them (engine/yuv.py); `describe` is called once, when it is sent. `first`: only if the
        sink has had no frame yet (the picture the session showed before its video started).
        True if it replaced a frame not yet sent, which never will be."""

    async def close(self) -> None: ...


class Connection:
    """One client as the runtime sees it: its core session plus what waits to be sent."""

    def __init__(self, session: Session, frame_drops: Counter[str], peer: str = "") -> None:
        self.session = session
        self.peer = peer  # the client's IP address
        self.frames: FrameSlot[EncodedFrame] = FrameSlot(frame_drops)
        self.control: deque[ServerMessage] = deque(maxlen=CONTROL_BACKLOG)
        self.closed = False
        self.refine_timer: asyncio.TimerHandle | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.video: VideoSink | None = None
        # Set by the transport that can answer WebRTC offers (called with the offer's SDP).
        self.start_webrtc: Callable[[str], None] | None = None
        self.video_offers = 0  # offers seen, counted by the transport: the newest is answered
        self.close_request: Close | None = None  # sent after the queued control messages
        self.prompt_truncated = False  # the last frame's prompt was cut to the encoder's limit
        # The newest frame made as a JPEG: what a video track that starts later shows first,
        # unless a newer frame went to video (video_seq, the newest seq offered to one).
        self.last_jpeg: EncodedFrame | None = None
        self.video_seq = -1
        # Called by the transport when `video` becomes active (set by the runtime).
        self.on_video_started: Callable[[], None] | None = None
        self._wake = asyncio.Event()

    @property
    def active_video(self) -> VideoSink | None:
        """The video track frames go to instead of the WebSocket, once it carries them."""
        return self.video if self.video is not None and self.video.active else None

    def send(self, message: ServerMessage) -> None:
        self.control.append(message)
        self._wake.set()

    def offer_frame(self, frame: EncodedFrame) -> None:
        self.frames.put(frame)
        self._wake.set()

    def request_close(self, close: Close) -> None:
        self.close_request = close
        self._wake.set()

    async def next_outgoing(self) -> ServerMessage | EncodedFrame | Close:
        """The next thing to send: control messages first, then a close if one was asked for,
        then the newest frame."""
        while True:
            if self.control:
                return self.control.popleft()
            if self.close_request is not None:
                return self.close_request
            frame = self.frames.take()
            if frame is not None:
                return frame
            self._wake.clear()
            await self._wake.wait()


class FeedViewer:
    """One MJPEG viewer as the transport sees it: waits for the newest frame of its feed."""

    def __init__(self, runtime: Runtime, viewer: Viewer[EncodedFrame]) -> None:
        self._runtime = runtime
        self._viewer = viewer
        self._wake = asyncio.Event()
        self._last: EncodedFrame | None = None

    async def next_frame(self, repeat_after_s: float) -> EncodedFrame | None:
        """The feed's newest frame, as soon as there is one this viewer has not had; the last
        one again after `repeat_after_s` without a new one (so a viewer that vanished is found
        out by the failed write, and a screen that joined late gets its picture); None once the
        feed has ended (its session closed, or the server is shutting down)."""
        while True:
            self._wake.clear()
            if self._viewer.feed.ended:
                return None
            frame = self._viewer.take()
            if frame is not None:
                self._last = frame
                return frame
            try:
                await asyncio.wait_for(self._wake.wait(), repeat_after_s)
            except TimeoutError:
                if self._last is not None:
                    return self._last

    def close(self) -> None:
        self._runtime.close_viewer(self)

    # for the runtime
    def wake(self) -> None:
        self._wake.set()

    @property
    def viewer(self) -> Viewer[EncodedFrame]:
        return self._viewer


class Runtime:
    def __init__(self, config: Config, engine: Engine, metrics: Metrics) -> None:
        self.config = config
        self.engine = engine
        self.metrics = metrics
        self.scheduler = Scheduler()  # shared with the engine thread: hold _lock to touch it
        self._lock = threading.Lock()
        self.frame_drops: Counter[str] = Counter()
        self.connections: dict[str, Connection] = {}
        # MJPEG viewers: the policy (feeds, channels, cap) is core's; here, who to wake.
        # Checked by the CLI; clients get the same STUN/TURN servers as the server's peers.
        self.ice_servers = tuple(parse_ice_server(url).to_json() for url in config.ice_servers)
        self.viewers: Viewers[EncodedFrame] = Viewers(config.max_mjpeg_viewers, self.frame_drops)
        self._watching: dict[Feed[EncodedFrame], set[FeedViewer]] = {}
        self.ready = False
        self.limits: Limits | None = None  # set once the model is loaded
        self.failure: BaseException | None = None
        self.draining = False  # shutting down: /readyz says so and new sessions are refused
        self.abandoned = False  # shutdown gave up waiting for the engine thread
        self._thread = EngineThread()
        # Set (from the loop) when an update arrives; a running refine polls it from the engine
        # thread between UNet steps and gives way.
        self._preempt = threading.Event()
        self.refine: RefinePolicy | None = None
        self._work = threading.Event()  # set when a job is submitted, or to stop the engine loop
        self._stopping = False  # the engine loop ends after the batch in flight (under _lock)
        self._batch_ended = time.monotonic()  # when the engine finished its last batch
        self._tasks: set[asyncio.Task[None]] = set()
        self._started: asyncio.Task[None] | None = None
        self._lag_watch: asyncio.Task[None] | None = None
        metrics.watch(self._snapshot)

    # ------------------------------------------------------------ lifecycle

    def start(self, on_failure: Callable[[BaseException], None] | None = None) -> None:
        """Load and warm the model in the background; /readyz turns ready when done.

        /healthz answers meanwhile. If loading fails, /readyz reports why and `on_failure`
        is called (the CLI uses it to exit, so a supervisor sees the failure).
        """
        self._started = asyncio.create_task(self._load_then_dispatch(on_failure))

    async def _load_then_dispatch(
        self, on_failure: Callable[[BaseException], None] | None
    ) -> None:
        try:
            await self._thread.run(self.engine.load)
            await self._thread.run(self.engine.warm_up)
        except Exception as exc:
            self.failure = exc
            log.error("model failed to load: %s", exc)
            if on_failure is not None:
                on_failure(exc)
            return
        # The engine knows what the model can render; the config caps what a message may carry.
        self.limits = dataclasses.replace(
            self.engine.limits,
            max_message_bytes=self.config.max_message_bytes,
            max_prompt_chars=self.config.max_prompt_chars,
            max_image_bytes=self.config.max_image_bytes,
            max_messages_per_s=self.config.max_messages_per_s,
            message_burst=self.config.message_burst,
            max_webrtc_peers=self.config.max_webrtc_peers,
            max_mjpeg_viewers=self.config.max_mjpeg_viewers,
            idle_timeout_s=max(0.0, self.config.idle_timeout_s),
            ping_interval_s=max(0.0, self.config.ws_ping_interval_s),
            ping_timeout_s=max(0.0, self.config.ws_ping_timeout_s),
        )
        self.refine = self._refine_policy()
        self.ready = True
        self.metrics.ready.set(1)
        log.info("ready: sizes %s, steps %s", self.engine.limits.sizes, self.engine.limits.steps)
        # Watched from here on: loading holds the GIL in long stretches (hundreds of ms on
        # this CPU) before any client is served; what matters is the loop while serving.
        self._lag_watch = asyncio.create_task(self._watch_loop_lag())
        await self._dispatch()

    def _refine_policy(self) -> RefinePolicy | None:
        cfg = self.config
        if cfg.refine_after_ms <= 0:
            return None
        steps = self.engine.refine_steps(cfg.refine_steps)
        improves_decoder = cfg.refine_full_vae and self.engine.c.full_vae is not self.engine.c.vae
        if steps <= self.engine.limits.default_steps and not improves_decoder:
            return None  # nothing a refine could improve on the default picture
        return RefinePolicy(cfg.refine_after_ms / 1e3, steps, cfg.refine_full_vae)

    async def _watch_loop_lag(self, interval: float = 0.01) -> None:
        """Anything that blocks the loop while serving (encoding on it, a slow callback) delays
        every client; this measures it, as the lateness of a short timer."""
        loop = asyncio.get_running_loop()
        worst = 0.0
        while True:
            before = loop.time()
            await asyncio.sleep(interval)
            lag = max(0.0, loop.time() - before - interval)
            self.metrics.loop_lag.observe(lag)
            if lag > worst:
                worst = lag
                self.metrics.loop_lag_max.set(lag)

    def drain(self) -> None:
        """The server is shutting down: /readyz says so, no new session or viewer is admitted,
        and every MJPEG stream ends now (an HTTP response that never ends would otherwise hold
        the graceful shutdown for its whole timeout). Idempotent."""
        self.draining = True
        self._wake_feeds(self.viewers.drain())

    async def stop(self) -> None:
        self.drain()
        self.ready = False
        self.metrics.ready.set(0)
        with self._lock:
            self._stopping = True
        self._work.set()
        self._preempt.set()  # a refine in flight gives way
        if self._lag_watch is not None:
            self._lag_watch.cancel()
        if self._started is not None:
            self._started.cancel()
            await asyncio.gather(self._started, return_exceptions=True)
        # The render in flight finishes (a GPU step is never abandoned half-way), within half
        # the shutdown timeout (uvicorn had the other half to close the connections).
        limit = self.config.shutdown_timeout_s / 2
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        try:
            await asyncio.wait_for(asyncio.to_thread(self._thread.shutdown), limit)
        except TimeoutError:
            self.abandoned = True
            log.error("the engine is still busy after %.1f s; exiting without waiting for it", limit)
        # What this runtime spawned (frame deliveries, WebRTC negotiations, the peer closes of
        # the sessions uvicorn just closed) ends here, finished or cancelled, rather than be
        # dropped half-done by the loop's end: a peer close cut short leaves its ports open.
        # (Within the same half of the shutdown timeout as the engine.)
        if self._tasks:
            wait_s = min(TASKS_AT_STOP_S, max(0.0, deadline - loop.time()))
            _, pending = await asyncio.wait(set(self._tasks), timeout=wait_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def health(self) -> tuple[bool, dict[str, object]]:
        """(ready, what /readyz says)."""
        if self.failure is not None:
            return False, {"status": "failed", "error": str(self.failure)}
        if self.draining:
            return False, {"status": "shutting_down"}
        if not self.ready:
            warming = self.engine.warming  # set by the engine thread as buckets are warmed
            if warming is None:
                return False, {"status": "loading"}
            return False, {"status": "loading", "warm_up": warming.report()}
        busy = self._thread.busy_for()
        if busy > self.config.stuck_after_s:
            return False, {"status": "stuck", "error": f"one engine call has run for {busy:.0f} s"}
        return True, {"status": "ready", "model": self.engine.model_info()}

    # ------------------------------------------------------------ sessions

    def open_session(self, peer: str = "", channel: str | None = None) -> Connection:
        """A session for a client connecting from address `peer`, its frames also shown on
        channel `channel` (checked by the caller with core.viewers.channel_name_ok)."""
        if self.draining:
            raise ServerFull("the server is shutting down")
        if len(self.connections) >= self.config.max_sessions:
            raise ServerFull(f"the server is at its limit of {self.config.max_sessions} sessions")
        if sum(c.peer == peer for c in self.connections.values()) >= self.config.max_sessions_per_ip:
            raise ServerFull(
                f"{peer} already has {self.config.max_sessions_per_ip} sessions, the limit per address"
            )
        limits = self.limits
        assert limits is not None, "open_session() before the runtime is ready"
        session_id = secrets.token_hex(4)
        while session_id in self.connections:
            session_id = secrets.token_hex(4)
        session = Session(session_id, limits, seed=secrets.randbelow(SEED_MAX + 1),
                          refine=self.refine, opened_at=time.monotonic())
        conn = Connection(session, self.frame_drops, peer)
        conn.on_video_started = partial(self._video_started, conn)
        self.connections[session_id] = conn
        self.viewers.add_session(session_id, channel)
        self._watch_idle(conn)
        conn.send(
            Hello(session_id, session.seed, self.engine.model_info(), limits,
                  server=f"promptcast/{__version__}",
                  refine=self.refine.to_json() if self.refine else None, channel=channel,
                  ice_servers=self.ice_servers)
        )
        return conn

    def close_session(self, conn: Connection) -> None:
        conn.closed = True
        if conn.video is not None:  # frees the peer connection and its encoder
            self.spawn(conn.video.close())
            conn.video = None
        if conn.refine_timer is not None:
            conn.refine_timer.cancel()
        if conn.idle_timer is not None:
            conn.idle_timer.cancel()
        conn.frames.close()
        with self._lock:
            self.scheduler.remove_session(conn.session.id)
        self.connections.pop(conn.session.id, None)
        self._wake_feeds(self.viewers.remove_session(conn.session.id))

    # ------------------------------------------------------------ MJPEG viewers

    def open_viewer(self, key: FeedKey) -> FeedViewer | Refusal:
        """A viewer of a session's or channel's frames, or why not. The caller must close() it."""
        viewer = self.viewers.open(key)
        if isinstance(viewer, Refusal):
            return viewer
        fv = FeedViewer(self, viewer)
        self._watching.setdefault(viewer.feed, set()).add(fv)
        return fv

    def close_viewer(self, fv: FeedViewer) -> None:
        feed = fv.viewer.feed
        self.viewers.close(fv.viewer)
        watchers = self._watching.get(feed)
        if watchers is not None:
            watchers.discard(fv)
            if not watchers:
                del self._watching[feed]

    def _wake_feeds(self, feeds: list[Feed[EncodedFrame]]) -> None:
        for feed in feeds:
            for fv in self._watching.get(feed, ()):
                fv.wake()

    def on_text(self, conn: Connection, raw: str) -> None:
        self._perform(conn, conn.session.receive_text(raw, time.monotonic()))

    def on_binary(self, conn: Connection, data: bytes) -> None:
        self._perform(conn, conn.session.receive_binary(data, time.monotonic()))

    def _perform(self, conn: Connection, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Submit):
                self.metrics.prompts.inc()
                self._submit(action.job)
                self._preempt.set()
            elif isinstance(action, Close):
                self.metrics.rejected.labels("flood").inc()
                log.info("session %s: closing: %s", conn.session.id, action.reason)
                conn.request_close(action)
            elif isinstance(action, StartWebRTC):
                peers = sum(c.video is not None for c in self.connections.values())
                if conn.start_webrtc is None:
                    conn.send(ErrorMessage(ErrorCode.WEBRTC_FAILED, "WebRTC is not available here"))
                elif conn.video is None and peers >= self.config.max_webrtc_peers:
                    # Each peer holds a video encoder; past the limit, frames stay on the socket.
                    conn.send(ErrorMessage(
                        ErrorCode.WEBRTC_FAILED,
                        f"the server already has {peers} video peers, its limit; frames keep "
                        "coming over this WebSocket",
                    ))
                else:
                    conn.start_webrtc(action.offer_sdp)
            else:
                self._reply(conn, action)

    def _submit(self, job: Job) -> None:
        self.engine.prefetch(job.request)  # an init image decodes beside the engine, not on it
        with self._lock:
            self.scheduler.submit(job)
        self._work.set()

    def _reply(self, conn: Connection, action: Reply) -> None:
        message = action.message
        if isinstance(message, ErrorMessage):
            self.metrics.rejected.labels(message.code).inc()
            log.info("session %s: rejected message: %s", conn.session.id, message.message)
        else:
            self.metrics.unchanged.inc()
        conn.send(message)

    def frame_message(self, frame: EncodedFrame) -> tuple[str, bytes]:
        """The header and image to send for `frame`; called by the transport just before sending."""
        return serialise(self._frame_header(frame.job, frame.timings, "jpeg")), frame.jpeg

    def _frame_header(self, job: Job, timings: dict[str, float], fmt: str, count: bool = True
                      ) -> FrameHeader:
        """Counts the frame as sent now (unless `count` is False: a frame shown again), and
        describes it."""
        total = time.monotonic() - job.received_at
        if count:
            self.metrics.sent.inc()
            self.metrics.latency.observe(total)
        req = job.request
        return FrameHeader(
            seq=job.seq, width=req.width, height=req.height, seed=req.seed, steps=req.steps,
            format=fmt, timings={"total_ms": total * 1e3, **timings}, refined=job.refined,
        )

    # ------------------------------------------------------------ the engine loop

    async def _dispatch(self) -> None:
        # One batch at a time goes to the engine, taken when the engine is free: there is never
        # a queue in front of the GPU, so the newest prompts are what run next.
        loop = asyncio.get_running_loop()
        try:
            await self._thread.serve(self._next_batch, lambda batch: self._run_batch(batch, loop))
        except Exception as exc:  # a bug: no frame would ever come again, so say so
            log.exception("the engine loop failed")
            self.failure = exc

    def _next_batch(self) -> list[Job] | None:
        """On the engine thread: the next batch to render, waiting for one; None to stop."""
        while True:
            self._work.clear()  # before looking: a job submitted after the look sets it again
            with self._lock:
                if self._stopping:
                    return None
                batch = self.scheduler.next_batch(self.engine.max_batch)
                if batch and batch[0].refined:  # refines are batched only with refines
                    self._preempt.clear()
                    if self.scheduler.has_update_waiting():
                        self._preempt.set()
            if batch:
                return batch
            self._work.wait()

    def _run_batch(self, batch: list[Job], loop: asyncio.AbstractEventLoop) -> None:
        """On the engine thread: render `batch`, free its sessions for their next jobs, and
        hand the frames to the loop."""
        started = time.monotonic()
        # How long the engine stood idle while this batch's first job waited: the host's share
        # of its keystroke latency (and of a GPU's idle time) between two frames.
        self.metrics.start_delay.observe(
            max(0.0, started - max(self._batch_ended, min(j.received_at for j in batch))))
        cancelled = self._preempt.is_set if batch[0].refined else None
        try:
            frames: list[Rendered | Exception] | None = self._render(batch, cancelled)
        except RenderCancelled:
            frames = None
        except Exception as exc:  # a bug outside the engine's calls: the batch fails, not the loop
            log.exception("a batch failed outside the engine")
            frames = [exc] * len(batch)
        self._batch_ended = time.monotonic()
        with self._lock:
            for job in batch:
                self.scheduler.finish(job, preempted=frames is None)
        if frames is not None:
            loop.call_soon_threadsafe(self._rendered, batch, frames, started)

    def _rendered(self, batch: list[Job], frames: list[Rendered | Exception], started: float
                  ) -> None:
        """On the loop: a batch's frames (or the exception each render raised) to deliver."""
        self.metrics.batch_size.observe(len(batch))
        for job, rendered in zip(batch, frames, strict=True):
            if isinstance(rendered, Exception):
                self._render_failed(job, rendered)
                continue
            self.metrics.rendered.inc()
            conn = self.connections.get(job.session_id)
            if conn is not None and not job.refined:
                conn.session.frame_rendered(job, time.monotonic())
                self._schedule_refine(conn)
                self._notice_truncation(conn, job, rendered.prompt_truncated)
            self.spawn(self._deliver(job, rendered, queue_s=started - job.received_at))

    def _render(
        self, batch: list[Job], cancelled: Callable[[], bool] | None
    ) -> list[Rendered | Exception]:
        """On the engine thread: each job's frame, or the exception its rendering raised. A
        batch that fails is rendered again job by job, so one request's fault is reported to its
        session only and the others still get their frames."""
        requests = [job.request for job in batch]
        jpeg, video = self._outputs(batch)
        try:
            return list(self.engine.render_batch(requests, cancelled, jpeg, video))
        except RenderCancelled:
            raise
        except Exception as exc:
            self._recover(exc)
            if len(batch) == 1:
                return [exc]
        results: list[Rendered | Exception] = []
        for request, want_jpeg, want_video in zip(requests, jpeg, video, strict=True):
            try:
                results.append(self.engine.render(request, cancelled, want_jpeg, want_video))
            except RenderCancelled:
                raise
            except Exception as exc:
                self._recover(exc)
                results.append(exc)
        return results

    def _recover(self, exc: Exception) -> None:
        """Let the engine free what a failed render left (device memory after an OOM)."""
        try:
            self.engine.recover(exc)
        except Exception:
            log.exception("the engine could not recover after a failed render")

    def _notice_truncation(self, conn: Connection, job: Job, truncated: bool) -> None:
        """Tell the client once when its prompt grows past what the text encoder reads (and
        again if it shrinks back under and grows past it later)."""
        if truncated and not conn.prompt_truncated:
            limit = self.engine.model_info().get("max_prompt_tokens")
            conn.send(Notice(
                NoticeCode.PROMPT_TRUNCATED,
                f"the prompt is longer than the {limit} tokens the text encoder reads; "
                "the rest is ignored", job.seq,
            ))
        conn.prompt_truncated = truncated

    # ------------------------------------------------------------ refining idle sessions

    def _schedule_refine(self, conn: Connection) -> None:
        due = conn.session.refine_due_at()
        if conn.refine_timer is not None:
            conn.refine_timer.cancel()
            conn.refine_timer = None
        if due is not None and not conn.closed:
            delay = max(0.0, due - time.monotonic())
            conn.refine_timer = asyncio.get_running_loop().call_later(delay, self._refine, conn)

    def _refine(self, conn: Connection) -> None:
        conn.refine_timer = None
        if conn.closed:
            return
        job = conn.session.refine_job(time.monotonic())
        if job is not None:
            self.metrics.refines.inc()
            self._submit(job)
        else:
            self._schedule_refine(conn)  # typing went on: look again when it may be idle

    # ------------------------------------------------------------ idle timeout

    def _watch_idle(self, conn: Connection) -> None:
        """Close `conn` once it has sent nothing for the idle timeout. One timer per session,
        re-armed only when it fires early (messages only move the deadline), so a client
        typing 50 messages a second costs no timer churn."""
        conn.idle_timer = None
        if conn.closed:
            return
        close = conn.session.idle_close(time.monotonic())
        if close is not None:
            log.info("session %s: closing: %s", conn.session.id, close.reason)
            conn.request_close(close)
            return
        now = time.monotonic()
        due = conn.session.idle_due_at(now)
        if due is not None:
            delay = max(0.0, due - now)
            conn.idle_timer = asyncio.get_running_loop().call_later(delay, self._watch_idle, conn)

    def _render_failed(self, job: Job, exc: Exception) -> None:
        if isinstance(exc, BadImage):  # the client's fault: no traceback in the log
            log.info("session %s: seq %d: %s", job.session_id, job.seq, exc)
            error = ErrorMessage(ErrorCode.BAD_IMAGE, str(exc), job.seq)
        else:
            self.metrics.engine_errors.inc()
            log.exception("session %s: render of seq %d failed", job.session_id, job.seq,
                          exc_info=exc)
            error = ErrorMessage(ErrorCode.ENGINE_ERROR, f"rendering failed: {type(exc).__name__}",
                                 job.seq)
        conn = self.connections.get(job.session_id)
        if conn is not None:
            conn.session.render_failed(job)
            conn.send(error)

    def _outputs(self, batch: list[Job]) -> tuple[list[bool], list[bool]]:
        """Per job, on the engine thread, before it renders: whether the engine is to encode its
        frame as a JPEG, and whether to make its I420 planes for video. This reads the loop's
        state from this thread: a stale answer costs an encode or a conversion, never a frame
        (_deliver decides again once the frame is done), and one read as the loop changes it
        (a feed gone between two lookups) falls back to what is always correct."""
        try:
            return [self._wants_jpeg(job) for job in batch], [self._wants_video(job) for job in batch]
        except Exception:
            return [True] * len(batch), [False] * len(batch)

    def _wants_jpeg(self, job: Job) -> bool:
        """Whether job's frame is to be encoded by the engine (see _outputs)."""
        conn = self.connections.get(job.session_id)
        return conn is not None and self._jpeg_wanted(conn, job.session_id)

    def _wants_video(self, job: Job) -> bool:
        """Whether job's frame goes to a video track, whose I420 the engine may make (see
        _outputs)."""
        conn = self.connections.get(job.session_id)
        return conn is not None and conn.active_video is not None

    def _jpeg_wanted(self, conn: Connection, session_id: str) -> bool:
        """A session's frames go as JPEGs to its WebSocket unless it watches a video track,
        and to its MJPEG viewers."""
        return conn.active_video is None or self.viewers.wanted(session_id)

    async def _deliver(self, job: Job, rendered: Rendered, queue_s: float) -> None:
        conn = self.connections.get(job.session_id)
        if conn is None:
            self.frame_drops[FrameDropReason.SESSION_CLOSED] += 1
            return
        timings = {"queue_ms": queue_s * 1e3, **rendered.timings}
        for stage, ms in timings.items():
            self.metrics.stage.labels(stage.removesuffix("_ms")).observe(ms / 1e3)
        video = conn.active_video
        on_video = video is not None
        if video is not None:
            # The video encoder takes the pixels; the metadata goes with the frame, made (and
            # the frame counted as sent) when the track sends it. One it replaces is a drop.
            shown = dict(timings)
            if video.offer(rendered.pixels,
                           lambda: self._frame_header(job, shown, "video").to_json(),
                           rendered.yuv):
                self.frame_drops[FrameDropReason.SUPERSEDED] += 1
            conn.video_seq = max(conn.video_seq, job.seq)
        if not self._jpeg_wanted(conn, job.session_id):
            return  # no JPEG: nobody would see it
        jpeg = rendered.jpeg  # the engine's (--jpeg-encode), its time already in the timings
        if jpeg is None:
            t0 = time.monotonic()
            jpeg = await asyncio.to_thread(encode_jpeg, rendered.pixels,
                                           self.config.engine.jpeg_quality)
            encode_s = time.monotonic() - t0
            timings["encode_ms"] = encode_s * 1e3
            self.metrics.stage.labels("encode").observe(encode_s)
        if conn.closed:
            self.frame_drops[FrameDropReason.SESSION_CLOSED] += 1
            return
        frame = EncodedFrame(job.seq, job, jpeg, timings)
        if conn.last_jpeg is None or frame.seq >= conn.last_jpeg.seq:  # (a refine: the same seq)
            conn.last_jpeg = frame
        # The same JPEG goes to MJPEG viewers: one reference per feed, never a copy or a queue.
        self._wake_feeds(self.viewers.publish(job.session_id, frame))
        if not on_video:
            conn.offer_frame(frame)

    def _video_started(self, conn: Connection) -> None:
        """The session's video track now carries its frames, and the client shows the video
        instead of the JPEGs: the picture it showed last must not give way to nothing until
        the next frame (a page that reconnects sends its prompt and its offer at once, so that
        frame came over the WebSocket while the peer connected)."""
        if conn.last_jpeg is not None and conn.last_jpeg.seq >= conn.video_seq:
            self.spawn(self._show_on_video(conn, conn.last_jpeg))

    async def _show_on_video(self, conn: Connection, frame: EncodedFrame) -> None:
        req = frame.job.request
        try:
            pixels = await asyncio.to_thread(decode_image, frame.jpeg, req.width, req.height)
        except BadImage:  # not expected of our own JPEG; the next frame comes anyway
            log.exception("session %s: cannot show its last frame on video", conn.session.id)
            return
        video = conn.active_video
        if video is not None and not conn.closed:  # a frame offered meanwhile is newer: kept
            video.offer(pixels, lambda: self._frame_header(frame.job, frame.timings, "video",
                                                           count=False).to_json(), first=True)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` as a task the runtime keeps a reference to until it ends."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _snapshot(self) -> dict[str, object]:
        with self._lock:  # the engine thread counts preempted refines
            jobs_dropped = Counter(self.scheduler.dropped)
        return {
            "jobs_dropped": jobs_dropped,
            "frames_dropped": self.frame_drops,
            "prompt_cache_hits": self.engine.prompt_cache.hits,
            "prompt_cache_misses": self.engine.prompt_cache.misses,
            "sessions": len(self.connections),
            "video_peers": sum(c.video is not None for c in self.connections.values()),
            "mjpeg_viewers": self.viewers.count,
            "pending": self.scheduler.pending,
        }
