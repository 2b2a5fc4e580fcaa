"""`promptcast-client watch | type | osc`: try a server from a terminal, or bridge it to OSC."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from .client import DEFAULT_URL, Client
from .errors import PromptcastError, ServerError
from .frame import Frame


def connection_options() -> argparse.ArgumentParser:
    """--url and --token, shared with the OSC bridge."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--url",
        default=os.environ.get("PROMPTCAST_URL", DEFAULT_URL),
        help="the server's WebSocket URL (env PROMPTCAST_URL; default %(default)s)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("PROMPTCAST_TOKEN"),
        help="the server's token (env PROMPTCAST_TOKEN)",
    )
    return p


def session_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--seed", type=int, help="seed (default: the session's random one)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the server's)")
    p.add_argument("--size", type=parse_size, help="WIDTHxHEIGHT, one of the server's allowed sizes")
    return p


def parse_size(value: str) -> tuple[int, int]:
    try:
        w, h = value.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 512x512, not {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptcast-client", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    common = [connection_options(), session_options()]
    watch = sub.add_parser("watch", parents=common, help="render one prompt; save its frames")
    watch.add_argument("prompt")
    watch.add_argument(
        "--out", type=Path, default=Path("frames"), help="folder for frames (default %(default)s)"
    )
    watch.add_argument("--frames", type=int, default=0, help="exit after this many frames (default 0: never)")
    typ = sub.add_parser(
        "type",
        parents=common,
        help="each line of stdin is the new prompt; save frames, print keystroke-to-frame latency",
    )
    typ.add_argument(
        "--out", type=Path, default=Path("frames"), help="folder for frames (default %(default)s)"
    )
    typ.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="at the end of input, wait this long for the last line's frame (default %(default)s s)",
    )
    # Listed for --help only; main() hands `osc` and its arguments to promptcast_client.osc.
    sub.add_parser(
        "osc", add_help=False, help="bridge OSC (/prompt, /seed, /image) to the server; osc --help"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["osc"]:
        try:
            from .osc import main as osc_main
        except ImportError:
            print("the OSC bridge needs python-osc: pip install 'promptcast-client[osc]'", file=sys.stderr)
            return 2
        return osc_main(args_list[1:])
    args = build_parser().parse_args(args_list)
    command = watch if args.command == "watch" else type_lines
    return run_to_exit(command(args), "promptcast-client")


def run_to_exit(coro: Coroutine[Any, Any, int], prog: str) -> int:
    """Run a command's coroutine to its exit status: Ctrl-C is a normal end, and a client or
    network error is one line on stderr (status 1), not a traceback."""
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        return 0
    except (PromptcastError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"seed": args.seed, "steps": args.steps, "size": args.size}


def report(frame: Frame, path: Path, text: str | None = None) -> None:
    latency = "" if frame.latency_ms is None else f"{frame.latency_ms:7.1f} ms"
    server = frame.timings.get("total_ms")
    line = f"seq {frame.seq:<5} {latency}  (server {server:.1f} ms)  {frame.width}x{frame.height}"
    line += "  refined" if frame.refined else ""
    line += f"  -> {path}" + (f"  {text!r}" if text is not None else "")
    print(line, flush=True)


async def watch(args: argparse.Namespace) -> int:
    async with Client(args.url, args.token) as client:
        await client.send_prompt(args.prompt, **settings(args))
        saved = 0
        async for frame in client:
            report(frame, frame.save(args.out))
            saved += 1
            if args.frames and saved >= args.frames:
                break
    return 0


async def type_lines(args: argparse.Namespace) -> int:
    """Each line is the prompt as it now stands, sent the moment it is read, like a keystroke."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read_stdin() -> None:
        # A daemon thread rather than the loop's executor: asyncio.run() waits for executor
        # threads at exit, and one blocked in readline() would hang Ctrl-C until Enter.
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\r\n"))
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read_stdin, name="stdin", daemon=True).start()
    progress = Progress()
    async with Client(args.url, args.token) as client:
        printer = asyncio.create_task(print_frames(client, args.out, progress))
        first, last_seq, last_text = True, 0, None
        while (text := await lines.get()) is not None:
            if text == last_text:  # the server would answer `unchanged`: no new picture comes
                continue
            last_seq = await client.send_prompt(text, **(settings(args) if first else {}))
            progress.texts[last_seq], first, last_text = text, False, text
        waiter = asyncio.create_task(progress.until(last_seq))
        done, _ = await asyncio.wait(
            {waiter, printer}, timeout=args.timeout, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        printer.cancel()
        if printer in done:
            printer.result()  # the client's fatal error
        if waiter not in done:
            print(f"no frame for the last line within {args.timeout} s", file=sys.stderr)
            return 1
    return 0


class Progress:
    """The newest seq printed, for waiting on the last line's frame; and each seq's text."""

    def __init__(self) -> None:
        self.seq = 0
        self.texts: dict[int, str] = {}
        self._changed = asyncio.Event()

    def shown(self, seq: int) -> None:
        self.seq = max(self.seq, seq)
        self._changed.set()

    async def until(self, seq: int) -> None:
        while self.seq < seq:
            self._changed.clear()
            await self._changed.wait()


async def print_frames(client: Client, out: Path, progress: Progress) -> None:
    while True:
        try:
            frame = await client.next_frame()
        except ServerError as exc:  # the session goes on; the next line may well be fine
            print(f"server error: {exc}", file=sys.stderr, flush=True)
            continue
        report(frame, frame.save(out), progress.texts.get(frame.seq))
        progress.shown(frame.seq)
