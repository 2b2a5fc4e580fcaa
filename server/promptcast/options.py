"""Command-line option helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import os
from typing import Any


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        size = int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 512x512") from None
    if min(size) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: width and height must be positive")
    return size


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    return tuple(parse_size(part) for part in text.split(",") if part.strip())


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def non_negative_float(text: str) -> float:
    """Seconds, where 0 turns the feature off. NaN and infinity are refused: a timer cannot use
    them."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number, 0 or more")
    return value


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """"1,2,4,8" -> (1, 2, 4, 8): sorted, and always with 1 (a lone job must have a bucket)."""
    try:
        sizes = {int(part) for part in text.split(",") if part.strip()}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of batch sizes like 1,2,4,8") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes must be at least 1")
    return tuple(sorted(sizes | {1}))


def port_number(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number")
    return value


class Options:
    """Adds options whose default comes from an environment variable, and says so in --help."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser

    def add(self, flag: str, env: str, default: Any, help: str, **kw: Any) -> None:
        value = os.environ.get(env)
        shown = "" if default in (None, "", ()) else f" (default: {default})"
        # argparse runs `type` on string defaults, so a bad environment value is reported
        # exactly like a bad command-line value.
        self.parser.add_argument(
            flag, default=default if value is None else value,
            help=f"{help}{shown} [env: {env}]", **kw,
        )

    def flag(self, flag: str, env: str, help: str) -> None:
        """An on/off option; its environment twin is on when set to 1, true, yes or on."""
        value = os.environ.get(env, "").strip().lower()
        self.parser.add_argument(
            flag, action="store_true", default=value in ("1", "true", "yes", "on"),
            help=f"{help} [env: {env}]",
        )

    def multi(self, flag: str, env: str, help: str) -> None:
        """A repeatable option; its environment twin holds the values separated by commas."""
        value = os.environ.get(env, "")
        self.parser.add_argument(
            flag, action="append", default=[v.strip() for v in value.split(",") if v.strip()],
            help=f"{help} (repeatable) [env: {env}, comma-separated]",
        )
