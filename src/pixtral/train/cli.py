"""`pixtral train` and `python -m pixtral.train` (what torchrun runs).

pixtral train --config examples/train/config.toml
pixtral train --config examples/train/config.toml --nproc 2          # re-launches itself under torchrun
torchrun --nproc-per-node 2 -m pixtral.train --config ... --distributed fsdp
pixtral train --config ... --resume                                  # continue from the latest checkpoint
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

from pixtral.errors import PixtralError
from pixtral.train.config import add_config_arguments, make_config, overrides_from_args


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train or fine-tune a model (full or LoRA; one process or torchrun)",
        description="Train or fine-tune Pixtral on JSONL conversations. Fields come from --config and flags.",
    )
    _add_arguments(p)
    p.set_defaults(handler=handle_train)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in out_dir")
    p.add_argument(
        "--nproc",
        type=int,
        default=0,
        help="launch this many processes on this machine with torchrun (one per GPU, or CPU ranks with gloo)",
    )
    add_config_arguments(p)


def handle_train(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = make_config(args.config, overrides_from_args(args))
    except PixtralError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.nproc and args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _launch_torchrun(args.nproc, torchrun_argv(args))
    from pixtral.train.hooks import evals_task_hook
    from pixtral.train.loop import train

    try:
        result = train(cfg, resume=args.resume, eval_hook=evals_task_hook if cfg.eval_task else None)
    except PixtralError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result.export_dir is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {result.steps} steps; model exported to {result.export_dir}")
    return 0


def torchrun_argv(args: argparse.Namespace) -> list[str]:
    """The `python -m pixtral.train` arguments that reproduce this invocation (without --nproc)."""
    argv = ["--config", args.config] if args.config else []
    if args.resume:
        argv.append("--resume")
    for name, value in overrides_from_args(args).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else flag.replace("--", "--no-", 1))
        elif isinstance(value, list):
            argv += [flag, ",".join(value)]
        else:
            argv += [flag, str(value)]
    return argv


def _launch_torchrun(nproc: int, argv: list[str]) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.call([*cmd, "-m", "pixtral.train", *argv], env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pixtral.train", description=__doc__.split("\n\n")[0])
    _add_arguments(parser)
    return handle_train(parser.parse_args(argv))
