"""The OSC bridge: OSC messages in (TouchDesigner, Max, Pure Data, a lighting desk) become prompt
updates; each frame goes back out as an OSC notification.

In (UDP, `--listen`):

| address | arguments | does |
|---|---|---|
| `/prompt` | s text | the whole prompt as it stands |
| `/seed` | i seed | the session's seed (an int32; negative values wrap to 0 … 2^32−1) |
| `/steps` | i steps | the session's step count |
| `/size` | i width, i height | the session's size |
| `/strength` | f strength | img2img strength, (0, 1] |
| `/image` | b blob | an encoded PNG or JPEG: the init image (img2img) |
| `/image/clear` | | back to text-to-image |

Out (UDP, to `--target`):

| address | arguments | when |
|---|---|---|
| `/frame` | i seq, f latency_ms, s path, i width, i height | a frame arrived (see below) |
| `/error` | s code, s message | the server answered an `error` |

`latency_ms` is from sending the update to receiving its frame (-1 when unknown); `path` is where
the frame was saved, "" without `--out`.

OSC senders often send a value on every slider tick: updates are latest-wins, like the server's.
Messages that arrive while one update is being sent are merged into the next, and the messages of
one OSC bundle always make one update. Bundle timetags are ignored: everything applies at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import AsyncIOOSCUDPServer
from pythonosc.udp_client import SimpleUDPClient

from .cli import run_to_exit
from .client import Client, image_format
from .errors import PromptcastError, ServerError

log = logging.getLogger("promptcast_client.osc")

CLEAR = object()  # the pending image: drop it


class Bridge:
    """Forwards OSC to `client` and frames back to OSC. `start()` binds the listening socket and
    returns its address (port 0 picks a free one); `run()` forwards frames until the client
    fails or is closed; `close()` stops listening."""

    def __init__(
        self,
        client: Client,
        listen: tuple[str, int] = ("127.0.0.1", 9000),
        target: tuple[str, int] = ("127.0.0.1", 9001),
        out: Path | None = None,
    ) -> None:
        self.client = client
        self.listen = listen
        self.target = target
        self.out = out
        self._pending: dict[str, Any] = {}  # send_prompt() keyword arguments, merged
        self._image: Any = None  # None: no change; bytes: a new init image; CLEAR
        self._dirty = asyncio.Event()
        self._transport: asyncio.BaseTransport | None = None
        self._sender = SimpleUDPClient(*target)
        self._pump: asyncio.Task[None] | None = None

    def dispatcher(self) -> Dispatcher:
        # strict_timing=False: python-osc would otherwise sleep, on the event loop, until a
        # bundle's future timetag; the bridge renders what it gets at once.
        d = Dispatcher(strict_timing=False)
        d.map("/prompt", self._on_prompt)
        d.map("/seed", self._on_int, "seed")
        d.map("/steps", self._on_int, "steps")
        d.map("/size", self._on_size)
        d.map("/strength", self._on_strength)
        d.map("/image", self._on_image)
        d.map("/image/clear", self._on_clear)
        d.set_default_handler(lambda address, *args: log.warning("unknown OSC address %s", address))
        return d

    async def start(self) -> tuple[str, int]:
        server = AsyncIOOSCUDPServer(self.listen, self.dispatcher(), asyncio.get_running_loop())  # type: ignore[arg-type]
        self._transport, _ = await server.create_serve_endpoint()
        self._pump = asyncio.create_task(self._send_updates(), name="osc-updates")
        host, port = self._transport.get_extra_info("sockname")[:2]
        return host, port

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        self._sender.close()

    async def run(self) -> None:
        """Send each frame (and each server error) out as OSC."""
        while True:
            try:
                frame = await self.client.next_frame()
            except ServerError as exc:
                self._sender.send_message("/error", [exc.code, exc.message])
                continue
            path = str(frame.save(self.out)) if self.out is not None else ""
            latency = -1.0 if frame.latency_ms is None else round(frame.latency_ms, 3)
            self._sender.send_message("/frame", [frame.seq, latency, path, frame.width, frame.height])

    # -- OSC handlers: run on the loop, must not block; they only record the newest values --

    def _update(self, **fields: Any) -> None:
        self._pending.update(fields)
        self._dirty.set()

    def _on_prompt(self, address: str, *args: Any) -> None:
        if len(args) != 1 or not isinstance(args[0], str):
            log.warning("%s wants one string, got %r", address, args)
            return
        self._update(text=args[0])

    def _on_int(self, address: str, fixed: list[str], *args: Any) -> None:
        if len(args) != 1 or not isinstance(args[0], (int, float)):
            log.warning("%s wants one int, got %r", address, args)
            return
        value = int(args[0])
        if fixed[0] == "seed":
            value &= 0xFFFFFFFF  # OSC ints are signed 32-bit; seeds go up to 2^32-1
        self._update(**{fixed[0]: value})

    def _on_size(self, address: str, *args: Any) -> None:
        if len(args) != 2 or not all(isinstance(a, int) for a in args):
            log.warning("%s wants two ints, got %r", address, args)
            return
        self._update(size=(args[0], args[1]))

    def _on_strength(self, address: str, *args: Any) -> None:
        if len(args) != 1 or not isinstance(args[0], (int, float)):
            log.warning("%s wants one float, got %r", address, args)
            return
        self._update(strength=float(args[0]))

    def _on_image(self, address: str, *args: Any) -> None:
        if len(args) != 1 or not isinstance(args[0], bytes):
            log.warning("%s wants one blob, got %r", address, [type(a).__name__ for a in args])
            return
        try:
            image_format(args[0])
        except ValueError as exc:
            log.warning("%s: %s", address, exc)
            return
        self._image = args[0]
        self._dirty.set()

    def _on_clear(self, address: str, *args: Any) -> None:
        self._image = CLEAR
        self._dirty.set()

    async def _send_updates(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            fields, self._pending = self._pending, {}
            image, self._image = self._image, None
            try:
                if fields:
                    await self.client.send_prompt(**fields)
                if image is CLEAR:
                    await self.client.clear_image()
                elif image is not None:
                    await self.client.send_image(image)
            except PromptcastError as exc:  # the client has failed; run() reports and ends
                log.error("cannot send: %s", exc)
                return


def parse_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {value!r}")
    return host or "127.0.0.1", int(port)


def build_parser() -> argparse.ArgumentParser:
    from .cli import connection_options

    p = argparse.ArgumentParser(
        prog="promptcast-client osc",
        parents=[connection_options()],
        description="Bridge OSC to a promptcast server. In: /prompt s, /seed i, /steps i, /size i i, "
        "/strength f, /image b, /image/clear. Out: /frame i seq, f latency_ms, s path, i width, "
        "i height; /error s code, s message.",
    )
    p.add_argument("--listen", type=parse_address, default=("127.0.0.1", 9000),
                   help="where to receive OSC (default 127.0.0.1:9000)")  # fmt: skip
    p.add_argument("--target", type=parse_address, default=("127.0.0.1", 9001),
                   help="where to send /frame and /error (default 127.0.0.1:9001)")  # fmt: skip
    p.add_argument("--out", type=Path, help="save frames in this folder; /frame then says where")
    return p


async def serve(args: argparse.Namespace) -> int:
    async with Client(args.url, args.token) as client:
        bridge = Bridge(client, args.listen, args.target, args.out)
        host, port = await bridge.start()
        print(f"OSC in on {host}:{port}, out to {args.target[0]}:{args.target[1]}; "
              f"server {args.url}", flush=True)  # fmt: skip
        try:
            await bridge.run()
        finally:
            await bridge.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`promptcast-client osc ...` (and `promptcast osc ...`). Returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_to_exit(serve(args), "promptcast-client osc")
