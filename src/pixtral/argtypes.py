"""argparse `type=` functions and options shared by the commands' flag definitions.

A wrong value is refused while the command line is parsed (one `error:` line naming the flag, exit status 2),
before any model is loaded. This module knows argparse and nothing of the commands.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _parse(text: str, kind: type, ok: Callable[[float], bool], what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(value):  # NaN fails every comparison, so it is refused too
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return value


def int_at_least(minimum: int) -> Callable[[str], int]:
    """A `type=` for whole numbers >= minimum."""

    def parse(text: str) -> int:
        return _parse(text, int, lambda v: v >= minimum, f"a whole number of at least {minimum}")

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def positive_float(text: str) -> float:
    """A number > 0 (seconds, say)."""
    return _parse(text, float, lambda v: v > 0, "a number greater than 0")


def non_negative_float(text: str) -> float:
    """A number >= 0 (0 = off)."""
    return _parse(text, float, lambda v: v >= 0, "a number of at least 0")


def port(text: str) -> int:
    """A TCP port, 0..65535 (0: any free port)."""
    return _parse(text, int, lambda v: 0 <= v <= 65535, "a port number 0..65535")


def add_threads_option(p: argparse.ArgumentParser, help: str) -> None:
    """`--threads N`: CPU threads for torch, at least 1 (omitted: torch's choice)."""
    p.add_argument("--threads", type=positive_int, metavar="N", help=help)


def add_tensor_parallel_option(p: argparse.ArgumentParser) -> None:
    """`--tensor-parallel-size N`: the model split over N ranks (docs/tensor-parallel.md)."""
    p.add_argument(
        "--tensor-parallel-size",
        type=positive_int,
        default=1,
        metavar="N",
        help="split the model over N processes / GPUs / machines (under torchrun: its N ranks; otherwise N "
        "processes started here); N must divide the KV heads (default 1; docs/tensor-parallel.md)",
    )
