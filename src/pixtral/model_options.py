"""The flags that choose and load a model, declared once for every command that loads one (generate, chat,
serve), and the one way they become an `Engine`. This module knows argparse and `Engine.load`; nothing of the
commands themselves."""

from __future__ import annotations

import argparse

from pixtral.argtypes import add_tensor_parallel_option, add_threads_option
from pixtral.engine.cpu_kernels import KERNELS
from pixtral.engine.quantize import GROUP_SIZES


def add_model_option(p: argparse.ArgumentParser) -> None:
    """`--model`: a folder in either format or a hub id (omitted: the bundled demo model)."""
    p.add_argument("--model", help="model folder (native or HF format) or hub id; default: the bundled model")


def add_load_options(p: argparse.ArgumentParser, threads_help: str) -> None:
    """How the model is loaded: dtype, device, weight-only quantization, CPU threads."""
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default=None,
        help="weights and activations dtype (default: float32 on the CPU, bfloat16 on CUDA; bfloat16 halves memory)",
    )
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N (default auto)"
    )
    p.add_argument(
        "--quantize",
        choices=["int8", "int4"],
        help="weight-only quantization of the decoder's linear layers, applied while loading (default: off)",
    )
    p.add_argument(
        "--group-size",
        type=int,
        choices=GROUP_SIZES,
        default=128,
        help=f"int4 group size: {', '.join(map(str, GROUP_SIZES))} (default 128)",
    )
    add_tensor_parallel_option(p)
    p.add_argument(
        "--kernel",
        choices=KERNELS,
        default=None,
        help="CPU kernels of the linear layers: auto (by the CPU's flags), onednn (packed bfloat16, int8 x int8 "
        "with VNNI/AMX; packed float32 too, which about doubles the throughput of 8+ concurrent float32 requests "
        "for ~10%% slower batch 1: worth it for a server) or aten (PyTorch's default ops); default: "
        "$PIXTRAL_KERNEL, else auto",
    )
    add_threads_option(p, threads_help)


def load_engine(args: argparse.Namespace, **engine_options):
    """The engine the flags above and the scheduler's (scheduler_options.py) describe (`engine_options`:
    Engine.load's other arguments, e.g. limits)."""
    from pixtral.engine import Engine
    from pixtral.scheduler_options import scheduler_config

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return Engine.load(
        model=args.model,
        dtype=args.dtype,
        device=args.device,
        quantize=args.quantize,
        group_size=args.group_size,
        tensor_parallel_size=args.tensor_parallel_size,
        scheduler=scheduler_config(args),
        kernel=args.kernel,
        **engine_options,
    )
