"""`pixtral train` and `python -m pixtral.train` (what torchrun runs).

examples:
  pixtral train --config examples/train/config.toml
  pixtral train --config examples/train/config.toml --mode lora --out-dir runs/lora
  pixtral train --config run.toml --nproc 2                  # re-launches itself under torchrun
  torchrun --nproc-per-node 2 -m pixtral.train --config run.toml --distributed fsdp
  pixtral train --config run.toml --resume                   # continue from the latest checkpoint

exit status:
  0    finished (model exported to out_dir/final)
  2    an error in the config, data or checkpoint (one line on stderr)
  143  interrupted by SIGTERM (130: SIGINT): a checkpoint was saved; run again with --resume
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from pixtral.errors import PixtralError
from pixtral.train.config import add_config_arguments, make_config, overrides_from_args

ERROR_DIR_ENV = "PIXTRAL_TRAIN_ERROR_DIR"  # set by --nproc: ranks leave their one-line errors there
USAGE_ERROR = 2


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train or fine-tune a model (full or LoRA; one process or torchrun)",
        description="Train or fine-tune Pixtral on JSONL conversations. Fields come from --config and flags.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(p)
    p.set_defaults(handler=handle_train)
    return p


def _epilog() -> str:
    return __doc__.split("\n\n", 1)[1]


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
        return _report(e)
    if args.nproc and args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return launch_torchrun(args.nproc, torchrun_argv(args))
    # lazy: the loop imports torch, which --help does not need
    from pixtral.train.hooks import evals_task_hook
    from pixtral.train.loop import train

    try:
        result = train(cfg, resume=args.resume, eval_hook=evals_task_hook if cfg.eval_task else None)
    except PixtralError as e:
        return _report(e)
    if result.interrupted:
        return 128 + result.signal
    if result.export_dir is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {result.steps} steps; model exported to {result.export_dir}")
    return 0


def _report(error: PixtralError) -> int:
    """One line on stderr; a rank launched by --nproc leaves it to the launcher, which prints it once."""
    folder = os.environ.get(ERROR_DIR_ENV)
    if folder and "RANK" in os.environ:
        (Path(folder) / f"rank{os.environ['RANK']}.txt").write_text(str(error))
    else:
        print(f"error: {error}", file=sys.stderr)
    return USAGE_ERROR


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


def launch_torchrun(nproc: int, argv: list[str]) -> int:
    """Run `python -m pixtral.train argv` on `nproc` local ranks with torchrun's launcher, in this process.
    Returns the ranks' exit status (2: their error, printed once; 143: interrupted) without torchrun's
    traceback; a signal to this process is passed on to the ranks, which save a checkpoint and stop."""
    from torch.distributed.elastic.multiprocessing import SignalException  # lazy, as the loop (handle_train)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # we say what failed
    with tempfile.TemporaryDirectory(prefix="pixtral-train-") as errors:
        os.environ[ERROR_DIR_ENV] = errors
        try:
            run(parse_args(["--standalone", "--nproc-per-node", str(nproc), "-m", "pixtral.train", *argv]))
        except SignalException as e:
            return 128 + int(e.sigval)
        except ChildFailedError as e:
            rank, failure = e.get_first_failure()
            code = failure.exitcode if failure.exitcode >= 0 else 128 - failure.exitcode
            messages = [p.read_text() for p in sorted(Path(errors).glob("rank*.txt"))]
            for message in dict.fromkeys(messages):  # once each, in rank order
                print(f"error: {message}", file=sys.stderr)
            if not messages and code not in (130, 143):
                print(
                    f"error: rank {rank} failed with exit status {code} (its output is above)",
                    file=sys.stderr,
                )
            return code
        finally:
            del os.environ[ERROR_DIR_ENV]
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pixtral.train",
        description=__doc__.split("\n\n")[0],
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    return handle_train(parser.parse_args(argv))
