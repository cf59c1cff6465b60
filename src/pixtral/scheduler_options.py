"""The flags that size and shape the engine's scheduler (KV memory, running requests, tokens per step, the
compiled decode step), declared once for every command that runs the engine (generate, chat, serve, bench),
and the one way they become a `SchedulerConfig` (docs/engine.md). This module knows argparse and the config;
nothing of the commands themselves."""

from __future__ import annotations

import argparse
from dataclasses import replace

from pixtral.argtypes import positive_int
from pixtral.engine.scheduler import SchedulerConfig

DEFAULT = SchedulerConfig()


def kv_memory(text: str) -> tuple[float, bool]:
    """`--kv-cache-memory`: GiB (e.g. 4 or 0.5), or a percentage of the free device memory (e.g. 90%, CUDA
    only) -> (value, is_fraction)."""
    text = text.strip()
    fraction = text.endswith("%")
    try:
        value = float(text[:-1] if fraction else text)
    except ValueError:
        value = float("nan")
    if not (0 < value <= 100 if fraction else value > 0):  # NaN fails both
        raise argparse.ArgumentTypeError(
            f"expected GiB greater than 0 or a percentage like 90%, got {text!r}"
        )
    return (value / 100, True) if fraction else (value, False)


def add_scheduler_options(p: argparse.ArgumentParser, kv_gib: float | None = None) -> None:
    """--kv-cache-memory, --max-num-seqs, --max-num-batched-tokens, --compile."""
    gib = kv_gib if kv_gib is not None else DEFAULT.kv_budget_bytes / 1024**3
    g = p.add_argument_group("scheduler")
    g.add_argument(
        "--kv-cache-memory",
        type=kv_memory,
        default=(gib, False),
        metavar="GIB|PCT%",
        help=f"KV cache pool in GiB, or a percentage of the free device memory on CUDA, e.g. 90%% (default "
        f"{gib:g}); charged in blocks as sequences grow; when full, the latest request is preempted",
    )
    g.add_argument(
        "--max-num-seqs",
        type=positive_int,
        default=DEFAULT.max_num_seqs,
        metavar="N",
        help=f"requests decoding at once at most (default {DEFAULT.max_num_seqs})",
    )
    g.add_argument(
        "--max-num-batched-tokens",
        type=positive_int,
        default=DEFAULT.max_num_batched_tokens,
        metavar="N",
        help="new tokens per step, decodes and prefill chunks together (default "
        f"{DEFAULT.max_num_batched_tokens})",
    )
    g.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the decode step (default: on with CUDA, where CUDA graphs win; off on the CPU)",
    )


def with_kv_memory(base: SchedulerConfig, kv_cache_memory: tuple[float, bool]) -> SchedulerConfig:
    """`base` with the KV pool that a parsed `--kv-cache-memory` (GiB, or a fraction of free memory) sets."""
    value, fraction = kv_cache_memory
    return replace(
        base,
        kv_budget_bytes=base.kv_budget_bytes if fraction else int(value * 1024**3),
        kv_memory_fraction=value if fraction else None,
    )


def scheduler_config(args: argparse.Namespace, base: SchedulerConfig = DEFAULT) -> SchedulerConfig:
    """The SchedulerConfig the flags above describe (other settings from `base`). `compile` None: decided
    by the device when the engine is loaded (engine.Engine.load)."""
    return replace(
        with_kv_memory(base, args.kv_cache_memory),
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        compile=args.compile,
    )
