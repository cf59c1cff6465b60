"""``pixtral synth``: write a split of the synthetic data set as JSONL + PNGs (training) or parquet (evaluation).

Wiring: the main CLI calls ``add_synthetic_parser(subparsers)``; the parser's ``func`` default takes the parsed
namespace and returns an exit code. ``python -m pixtral.synthetic.cli`` runs the same parser on its own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from pixtral.synthetic.core import MAX_SIDE, MIN_MAX_SIDE, SPLITS
from pixtral.synthetic.export import prepare_folder, write_jsonl, write_parquet
from pixtral.synthetic.generate import generate, resolve_tasks
from pixtral.synthetic.tasks import TASKS

EPILOG = """\
examples:
  # 20,000 small training conversations for a CPU-trained demo model (images at most 256 px a side)
  pixtral synth --out data/synth/train --split train --n 20000 --max-side 256
  # the held-out test set for `pixtral eval --task synthetic --data-dir data/synth/test --split test`
  pixtral synth --out data/synth/test --split test --n 500 --max-side 256 --format parquet
  # only the fine-grained tasks, full-size images
  pixtral synth --out data/fine --split validation --n 200 --tasks fine
  # write again into a folder that holds a data set: --overwrite removes the old one first
  pixtral synth --out data/synth/train --split train --n 20000 --max-side 256 --overwrite

The same --split/--seed/--n/--max-side/--tasks always write the same files. Splits never share an image.
"""


def add_synthetic_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``synth`` on the main CLI's subparsers."""
    p = subparsers.add_parser(
        "synth",
        help="generate the seeded synthetic image-question-answer data set",
        description="Draw images with PIL and write conversations whose answers need them "
        f"(tasks: {', '.join(TASKS)}).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(p)
    p.set_defaults(handler=handle_synth)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--split", choices=SPLITS, default="train", help="which split (default train)")
    p.add_argument("--n", type=int, default=1000, help="number of samples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--start", type=int, default=0, help="first sample index (to extend a set; default 0)")
    p.add_argument("--max-side", type=int, default=MAX_SIDE,
                   help=f"largest image side in pixels, {MIN_MAX_SIDE}..{MAX_SIDE} (default {MAX_SIDE})")  # fmt: skip
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                   help="task names, or fine / coarse / warmup (default: every fine and coarse task, round-robin)")  # fmt: skip
    p.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl",
                   help="jsonl: OUT/SPLIT.jsonl + OUT/images/ (training); parquet: OUT/SPLIT.parquet (evaluation)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true",
                   help="replace the data set in a non-empty --out (its JSONL/parquet files and images/ are removed)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def handle_synth(args: argparse.Namespace) -> int:
    try:
        tasks = resolve_tasks(args.tasks)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.n < 1 or args.start < 0:
        print("error: --n must be at least 1 and --start at least 0", file=sys.stderr)
        return 2
    if not MIN_MAX_SIDE <= args.max_side <= MAX_SIDE:
        print(f"error: --max-side must be in {MIN_MAX_SIDE}..{MAX_SIDE}", file=sys.stderr)
        return 2
    removed = prepare_folder(args.out, overwrite=args.overwrite)
    if removed:
        print(
            f"removed the previous data set in {args.out} ({len(removed)} files and folders)", file=sys.stderr
        )
    samples = generate(
        args.split, args.n, seed=args.seed, max_side=args.max_side, tasks=tasks, start=args.start
    )
    samples = tqdm(samples, total=args.n, desc=f"synth {args.split}", unit="sample", disable=args.no_progress)
    if args.format == "jsonl":  # an OSError (not a folder, permission denied) is the main CLI's one line
        path = write_jsonl(args.out, samples, name=args.split)
    else:
        path = write_parquet(args.out / f"{args.split}.parquet", samples)
    print(f"wrote {args.n} samples to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m pixtral.synthetic.cli ARGS` is `pixtral synth ARGS` (same errors, same exit codes)."""
    from pixtral.cli import main as pixtral_main  # here: pixtral.cli imports this module

    return pixtral_main(["synth", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
