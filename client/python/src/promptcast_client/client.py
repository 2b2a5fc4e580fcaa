"""The async client: one WebSocket to a promptcast server's /ws (docs/protocol.md), reconnecting
by itself and re-sending the session's state, so that nothing the user sent last is lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from .errors import AuthError, ConnectionLost, PromptcastError, ProtocolError, ServerError, ServerUnavailable
from .frame import Frame

log = logging.getLogger("promptcast_client")

DEFAULT_URL = "ws://127.0.0.1:8000/ws"
SUBPROTOCOL = "promptcast"
PROTOCOL_VERSION = 1
CLOSE_IDLE = 1000  # the server's idle timeout: reconnect only when there is something to send
UNAVAILABLE_CODES = ("not_ready", "server_full")  # followed by close 1013: retry later
SENT_TIMES_KEPT = 1024  # send times remembered for latency; older seqs rarely get a frame


@dataclass(frozen=True)
class Unchanged:
    """The server's `unchanged`: the picture for `seq` is the frame of `same_as`."""

    seq: int
    same_as: int


@dataclass
class SessionState:
    """What the user last asked for: re-sent whole after a reconnect. Seed, steps, size and the
    init image are session settings on the server, lost with the session; the text is too."""

    text: str | None = None  # None: no prompt sent yet
    seed: int | None = None
    steps: int | None = None
    size: tuple[int, int] | None = None
    strength: float | None = None
    image: tuple[bytes, str] | None = None  # (encoded image, "jpeg" | "png")

    @property
    def empty(self) -> bool:
        return self.text is None and self.image is None


Incoming = Frame | ServerError | Unchanged  # what the reader buffers for the caller


def image_format(data: bytes) -> str:
    """ "png" or "jpeg" from the file signature (the server checks the same signatures)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    raise ValueError("the image is neither PNG nor JPEG; encode it as one first")


class Client:
    """A promptcast session.

    ```
    async with Client("ws://127.0.0.1:8000/ws", token="...") as client:
        seq = await client.send_prompt("a red circle")
        frame = await client.wait_for(seq)
    ```

    Every send returns the update's `seq`; a frame with `seq >= s` shows update `s`. Frames are
    read in the background into a small buffer (`buffer` events; when a slow reader lets it
    fill, the oldest are dropped and counted in `dropped`, like the server's latest-wins).
    Server `error` messages are raised as ServerError from whichever call reads frames
    (`next_frame`, `wait_for`, `async for`, `poll_frame`); the client goes on after them.

    After the connection drops, the client reconnects with exponential backoff (from
    `backoff_initial` to `backoff_max` seconds, with jitter) and re-sends the whole session
    state (text, seed, steps, size, strength, init image) as new updates. The seed the first
    session started with is kept, so the picture stays the same. After the server's idle close
    (1000) it waits and reconnects on the next send. Sends never fail for a dropped
    connection: they update the state that is re-sent. AuthError and ProtocolError end the
    client: they are raised by the next call.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        reconnect: bool = True,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        open_timeout: float = 10.0,
        buffer: int = 16,
    ) -> None:
        self.url = url
        self.token = token
        self.reconnect = reconnect
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.open_timeout = open_timeout
        self.hello: dict[str, Any] | None = None  # the latest session's hello
        self.state = "new"  # new | open | idle | reconnecting | closed
        self.reconnects = 0
        self.dropped = 0  # events dropped because the reader fell behind
        self.notices: deque[dict[str, Any]] = deque(maxlen=16)
        self.last_frame: Frame | None = None
        self.session = SessionState()
        self._initial_seed: int | None = None
        self._seq = 0
        self._sent_at: OrderedDict[int, float] = OrderedDict()
        self._undo: OrderedDict[int, dict[str, tuple[Any, Any]]] = OrderedDict()
        self._events: deque[Incoming] = deque(maxlen=buffer)
        self._arrived = asyncio.Event()
        self._state_changed = asyncio.Event()
        self._wake = asyncio.Event()  # a send while idle or disconnected
        self._send_lock = asyncio.Lock()  # keeps seqs increasing and image + binary adjacent
        self._ws: ClientConnection | None = None
        self._fatal: PromptcastError | None = None
        self._closing = False
        self._supervisor: asyncio.Task[None] | None = None

    # -- connecting and closing -------------------------------------------------------------

    async def connect(self) -> dict[str, Any]:
        """Open the first connection and return the server's hello. Raises AuthError,
        ServerUnavailable, ProtocolError, or OSError when nothing listens at the URL; the
        reconnection takes over only after this succeeded."""
        if self._supervisor is not None:
            raise RuntimeError("connect() was already called")
        ws, hello = await self._open()
        await self._adopt(ws, hello)
        self._supervisor = asyncio.create_task(self._run(ws), name="promptcast-client")
        self._supervisor.add_done_callback(self._supervisor_done)
        return hello

    def _supervisor_done(self, task: asyncio.Task[None]) -> None:
        # A bug in the supervisor must not leave readers waiting forever for frames.
        if not task.cancelled() and task.exception() is not None and self._fatal is None:
            self._fail(PromptcastError(f"the client's connection task failed: {task.exception()!r}"))

    async def close(self) -> None:
        """Close the connection and stop reconnecting. Frame iteration ends."""
        self._closing = True
        if self._fatal is None:
            self._fatal = ConnectionLost("the client was closed")
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self._set_state("closed")
        self._arrived.set()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._ws is not None and self.state == "open"

    async def wait_state(self, *states: str, timeout: float | None = None) -> str:
        """Wait until `state` is one of `states` ("open", "idle", "reconnecting", "closed")."""

        async def until() -> str:
            while self.state not in states:
                self._state_changed.clear()
                await self._state_changed.wait()
            return self.state

        return await asyncio.wait_for(until(), timeout)

    # -- sending ----------------------------------------------------------------------------

    async def send_prompt(
        self,
        text: str | None = None,
        *,
        seed: int | None = None,
        steps: int | None = None,
        size: tuple[int, int] | None = None,
        strength: float | None = None,
    ) -> int:
        """Send the whole prompt as it stands (not a diff), with any session settings to change,
        and return its seq. `text=None` keeps the current text (to change only settings).
        Send on every keystroke: the server renders only the newest."""
        async with self._send_lock:
            self._raise_if_failed()
            s = self.session
            if text is not None:
                s.text = text
            elif s.text is None:
                s.text = ""
            seq = self._next_seq()
            message: dict[str, Any] = {"type": "prompt", "seq": seq, "text": s.text}
            settings = {"seed": seed, "steps": steps, "size": size, "strength": strength}
            self._change(seq, **{k: v for k, v in settings.items() if v is not None})
            if seed is not None:
                message["seed"] = seed
            if steps is not None:
                message["steps"] = steps
            if size is not None:
                message["width"], message["height"] = size
            if strength is not None:
                message["strength"] = strength
            await self._send([json.dumps(message)], seq)
            return seq

    async def set_seed(self, seed: int) -> int:
        return await self.send_prompt(seed=seed)

    async def set_steps(self, steps: int) -> int:
        return await self.send_prompt(steps=steps)

    async def set_size(self, width: int, height: int) -> int:
        return await self.send_prompt(size=(width, height))

    async def send_image(
        self, data: bytes, *, format: str | None = None, strength: float | None = None
    ) -> int:
        """Set the init image (img2img): a PNG or JPEG, encoded. The session's current text is
        drawn over it until clear_image(). Returns the update's seq."""
        fmt = format or image_format(data)
        async with self._send_lock:
            self._raise_if_failed()
            seq = self._next_seq()
            self._change(seq, image=(data, fmt), **({} if strength is None else {"strength": strength}))
            await self._send(self._image_messages(seq, data, fmt, strength), seq)
            return seq

    async def clear_image(self) -> int:
        """Drop the init image: back to text-to-image."""
        async with self._send_lock:
            self._raise_if_failed()
            seq = self._next_seq()
            self._change(seq, image=None)
            await self._send([json.dumps({"type": "image", "seq": seq, "clear": True})], seq)
            return seq

    # -- receiving --------------------------------------------------------------------------

    async def next_frame(self, timeout: float | None = None) -> Frame:
        """The next frame (in seq order; refined frames repeat a seq with `refined=True`).
        Raises ServerError for a server `error`, TimeoutError after `timeout` seconds, and the
        client's fatal error (AuthError, ProtocolError, ConnectionLost) once it has one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            event = await self._next_event(deadline)
            if isinstance(event, ServerError):
                raise event
            if isinstance(event, Frame):
                return event

    async def wait_for(self, seq: int, timeout: float | None = 60.0) -> Frame:
        """The first frame that shows update `seq` (a frame with a seq >= `seq`, or the frame the
        server named in `unchanged`). Frames before it are consumed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        target = seq
        while True:
            event = await self._next_event(deadline)
            if isinstance(event, ServerError):
                raise event
            if isinstance(event, Frame) and event.seq >= target:
                return event
            if isinstance(event, Unchanged) and event.seq >= seq:
                if self.last_frame is not None and self.last_frame.seq >= event.same_as:
                    return self.last_frame
                target = event.same_as

    def poll_frame(self) -> Frame | None:
        """The newest buffered frame without waiting, or None; older buffered frames are
        discarded. For plugin hosts that poll from a UI timer. Raises a buffered ServerError
        (the newest frame stays buffered for the next call)."""
        newest: Frame | None = None
        error: ServerError | None = None
        while self._events:
            event = self._events.popleft()
            if isinstance(event, Frame):
                newest = event
            elif isinstance(event, ServerError) and error is None:
                error = event
        if error is not None:
            if newest is not None:
                self._events.appendleft(newest)
            raise error
        if newest is None:
            self._raise_if_failed()
        return newest

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> Frame:
        try:
            return await self.next_frame()
        except ConnectionLost:
            if self._closing:
                raise StopAsyncIteration from None
            raise

    # -- internals --------------------------------------------------------------------------

    def _next_seq(self) -> int:
        # One counter across connections: a seq is then greater than any this connection sent,
        # and a frame after a reconnect still answers wait_for() on a seq sent before it.
        self._seq += 1
        return self._seq

    def _change(self, seq: int, **settings: Any) -> None:
        """Apply session settings, remembering the old values: if the server rejects update
        `seq`, they are put back, so that a reconnect does not re-send a rejected setting."""
        undo = {name: (getattr(self.session, name), value) for name, value in settings.items()}
        for name, value in settings.items():
            setattr(self.session, name, value)
        self._undo[seq] = undo
        while len(self._undo) > SENT_TIMES_KEPT:
            self._undo.popitem(last=False)

    def _rejected(self, seq: Any, code: str) -> None:
        # engine_error: the update was taken (only its rendering failed); rate_limited has no
        # seq. Every other error with a seq means the server did not apply that message.
        undo = self._undo.pop(seq, None) if isinstance(seq, int) and code != "engine_error" else None
        for name, (old, new) in (undo or {}).items():
            if getattr(self.session, name) == new:  # unless a later update changed it again
                setattr(self.session, name, old)

    def _raise_if_failed(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    def _set_state(self, state: str) -> None:
        self.state = state
        self._state_changed.set()

    def _image_messages(self, seq: int, data: bytes, fmt: str, strength: float | None) -> list[str | bytes]:
        header: dict[str, Any] = {"type": "image", "seq": seq, "format": fmt}
        if strength is not None:
            header["strength"] = strength
        return [json.dumps(header), data]

    async def _send(self, messages: list[str | bytes], seq: int) -> None:
        """Send on the open connection (the caller holds the send lock). Without one the state
        is only recorded: the supervisor reconnects and re-sends it."""
        self._sent_at[seq] = time.monotonic()
        while len(self._sent_at) > SENT_TIMES_KEPT:
            self._sent_at.popitem(last=False)
        ws = self._ws
        if ws is None:
            self._wake.set()
            return
        try:
            for m in messages:
                await ws.send(m)
        except ConnectionClosed:
            self._wake.set()  # the reader sees the close too; the state is re-sent after it

    async def _open(self) -> tuple[ClientConnection, dict[str, Any]]:
        # The token as a subprotocol, as the page sends it (docs/protocol.md, "Connecting"); the
        # server selects `promptcast` and never echoes the token.
        subprotocols = [Subprotocol(SUBPROTOCOL)]
        if self.token:
            subprotocols.append(Subprotocol(f"bearer.{self.token}"))
        try:
            ws = await ws_connect(
                self.url,
                subprotocols=subprotocols,
                max_size=None,
                open_timeout=self.open_timeout,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise AuthError(
                    status,
                    "the server refused the handshake: wrong or missing token, "
                    "or an Origin it does not allow",
                ) from exc
            raise ProtocolError(f"{self.url} answered HTTP {status}, not a WebSocket upgrade") from exc
        except InvalidHandshake as exc:
            raise ProtocolError(f"handshake with {self.url} failed: {exc}") from exc
        try:
            msg = _decode(await asyncio.wait_for(ws.recv(), self.open_timeout))
            if msg.get("type") == "error":
                code, text = str(msg.get("code")), str(msg.get("message", ""))
                raise (ServerUnavailable if code in UNAVAILABLE_CODES else ServerError)(code, text)
            if msg.get("type") != "hello":
                raise ProtocolError(f"expected hello, got {msg.get('type')!r}")
            if msg.get("protocol") != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"the server speaks protocol {msg.get('protocol')!r}; "
                    f"this client speaks {PROTOCOL_VERSION}"
                )
        except ConnectionClosed as exc:
            raise ConnectionLost(f"the server closed the connection before its hello ({exc})",
                                 exc.rcvd.code if exc.rcvd else None) from exc  # fmt: skip
        except BaseException:
            await ws.close()
            raise
        return ws, msg

    async def _adopt(self, ws: ClientConnection, hello: dict[str, Any]) -> None:
        """Make `ws` the connection and re-send the session state on it before any other send."""
        async with self._send_lock:
            self.hello = hello
            if self._initial_seed is None:
                self._initial_seed = int(hello.get("session", {}).get("seed", 0))
            self._ws = ws
            self._wake.clear()
            self._set_state("open")
            if not self.session.empty:  # a reconnect, or sends made before connect()
                self.reconnects += self._supervisor is not None
                log.info("reconnected to %s; re-sending the session state", self.url)
                await self._resend(ws)

    async def _resend(self, ws: ClientConnection) -> None:
        s = self.session
        seq = self._next_seq()
        # The seed goes along even when the user never set one: the new session would start
        # from a new random seed, and the picture would jump.
        prompt: dict[str, Any] = {
            "type": "prompt",
            "seq": seq,
            "text": s.text or "",
            "seed": s.seed if s.seed is not None else self._initial_seed,
        }
        if s.steps is not None:
            prompt["steps"] = s.steps
        if s.size is not None:
            prompt["width"], prompt["height"] = s.size
        if s.strength is not None:
            prompt["strength"] = s.strength
        # If this server rejects a setting (it may allow other sizes than the last one did),
        # drop it, so the next update falls back to the server's default.
        settings = {"seed": s.seed, "steps": s.steps, "size": s.size, "strength": s.strength}
        self._undo[seq] = {name: (None, value) for name, value in settings.items() if value is not None}
        messages: list[str | bytes] = [json.dumps(prompt)]
        if s.image is not None:
            seq = self._next_seq()
            messages += self._image_messages(seq, *s.image, None)
        self._sent_at[prompt["seq"]] = self._sent_at[seq] = time.monotonic()
        with contextlib.suppress(ConnectionClosed):  # the reader sees the close and we go again
            for m in messages:
                await ws.send(m)

    async def _run(self, ws: ClientConnection) -> None:
        """The supervisor: read until the connection closes, then reconnect (or not)."""
        while True:
            try:
                code, reason = await self._read(ws)
            except ProtocolError as exc:
                await ws.close()
                self._fail(exc)
                return
            self._ws = None
            if self._closing:
                return
            if code == CLOSE_IDLE:
                log.info("the server closed the idle connection; reconnecting on the next send")
                self._set_state("idle")
                await self._wake.wait()
                self._set_state("reconnecting")
            elif not self.reconnect:
                self._fail(ConnectionLost(f"connection closed ({code} {reason})", code))
                return
            else:
                log.info("connection closed (%s %s); reconnecting", code, reason)
                self._set_state("reconnecting")
            next_ws = await self._reconnect()
            if next_ws is None:
                return
            ws = next_ws

    async def _reconnect(self) -> ClientConnection | None:
        delay = self.backoff_initial
        while True:
            try:
                ws, hello = await self._open()
            except (AuthError, ProtocolError) as exc:
                self._fail(exc)
                return None
            except (OSError, asyncio.TimeoutError, ServerError, ConnectionLost) as exc:
                log.debug("reconnect failed (%s); next try in %.2f s", exc, delay)
                # Backoff, not synchronisation: nothing signals that the server is back.
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff_max)
                continue
            await self._adopt(ws, hello)
            return ws

    async def _read(self, ws: ClientConnection) -> tuple[int | None, str]:
        try:
            while True:
                raw = await ws.recv()
                if isinstance(raw, bytes):
                    raise ProtocolError("a binary message that no frame header announced")
                await self._handle(ws, _decode(raw))
        except ConnectionClosed:
            pass
        return ws.close_code, ws.close_reason or ""

    async def _handle(self, ws: ClientConnection, msg: dict[str, Any]) -> None:
        try:
            kind = msg.get("type")
            if kind == "frame":
                data = await ws.recv()
                if not isinstance(data, bytes):
                    raise ProtocolError("a frame header not followed by its image")
                frame = Frame.from_message(msg, data, time.monotonic(), self._sent_at.get(int(msg["seq"])))
                self.last_frame = frame
                self._push(frame)
            elif kind == "error":
                code = str(msg.get("code"))
                cls = ServerUnavailable if code in UNAVAILABLE_CODES else ServerError
                self._rejected(msg.get("seq"), code)
                self._push(cls(code, str(msg.get("message", "")), msg.get("seq")))
            elif kind == "unchanged":
                self._push(Unchanged(int(msg["seq"]), int(msg["same_as"])))
            elif kind == "notice":
                log.info("notice: %s", msg.get("message"))
                self.notices.append(msg)
            # Other types (video, webrtc_answer) do not concern a WebSocket-only client,
            # and newer servers may add more.
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"a malformed {msg.get('type')!r} message: {exc!r}") from exc

    def _push(self, event: Incoming) -> None:
        if len(self._events) == self._events.maxlen:
            self.dropped += 1
        self._events.append(event)
        self._arrived.set()

    def _fail(self, exc: PromptcastError) -> None:
        log.error("promptcast client stopped: %s", exc)
        self._fatal = exc
        self._ws = None
        self._set_state("closed")
        self._arrived.set()

    async def _next_event(self, deadline: float | None) -> Incoming:
        while not self._events:
            self._raise_if_failed()
            self._arrived.clear()
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            await asyncio.wait_for(self._arrived.wait(), timeout)
        return self._events.popleft()


def _decode(raw: str | bytes) -> dict[str, Any]:
    try:
        msg = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError(f"the server sent a message that is not JSON: {raw[:80]!r}") from exc
    if not isinstance(msg, dict):
        raise ProtocolError(f"the server sent JSON that is not an object: {raw[:80]!r}")
    return msg
