"""Decode speed of model variants side by side, interleaved in one process (issues #16, #21).

    .venv/bin/python bench/bench_decode_variants.py --dtype bfloat16 --variants fuse=0 fuse=1
    .venv/bin/python bench/bench_decode_variants.py --quantize int8 --variants fuse=0 fuse=1
    .venv/bin/python bench/bench_decode_variants.py --batch 8 --variants kernel=aten kernel=onednn

Each variant is a copy of one loaded model (random weights, 'small' preset by default) prepared its own way:
`fuse=0|1` (stacked projections, engine/fused_projections.py) and `kernel=auto|onednn|aten` (the CPU kernels).
Rounds alternate between the variants, so a change in the machine's speed (this one is shared and its memory
bandwidth drifts by 20% within minutes) falls on all of them alike; the median and the best of the rounds are
printed. Every variant's weights are in memory at once: 'small' in float32 is 4.4 GB per variant.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from pathlib import Path

import torch

from pixtral.benchmark import decode_rate
from pixtral.checkpoint.loader import load_model
from pixtral.checkpoint.random_init import create_random_checkpoint
from pixtral.config import preset
from pixtral.engine import Engine
from pixtral.engine.cpu_kernels import apply_cpu_kernels_
from pixtral.engine.fused_projections import fuse_projections_
from pixtral.engine.quantize import quantize_model_
from pixtral.prompt.tokenizer import load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=["tiny", "small"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--quantize", choices=["int8", "int4"], help="quantize first (int4: group 32)")
    ap.add_argument("--batch", type=int, default=1, help="concurrent requests per measurement")
    ap.add_argument("--tokens", type=int, default=12, help="tokens decoded per request per round")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--variants", nargs="+", required=True, help="e.g. fuse=1,kernel=onednn (comma-joined)")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        create_random_checkpoint(Path(tmp), preset(args.preset), dtype=dtype)
        base, _ = load_model(Path(tmp), dtype=dtype)
    if args.quantize:
        quantize_model_(base, args.quantize, group_size=32 if args.quantize == "int4" else 128)
    engines = []
    for variant in args.variants:
        options = dict(kv.split("=", 1) for kv in variant.split(","))
        model = copy.deepcopy(base)
        if options.get("fuse", "1") == "1":
            fuse_projections_(model)
        print(f"{variant}: {apply_cpu_kernels_(model, options.get('kernel', 'auto'))}", flush=True)
        engine = Engine(model, load_tokenizer(None), model_name=args.preset)
        decode_rate(engine, args.batch, 4)  # warm-up
        engines.append(engine)
    del base
    rates: list[list[float]] = [[] for _ in engines]
    for _ in range(args.rounds):
        for engine, rate in zip(engines, rates, strict=True):
            rate.append(decode_rate(engine, args.batch, args.tokens)[0])
    print(
        f"\n{args.preset}, {args.dtype}{', ' + args.quantize if args.quantize else ''}, {args.batch} concurrent"
    )
    for variant, rate in zip(args.variants, rates, strict=True):
        print(
            f"{variant:>28}: median {statistics.median(rate):6.2f} tok/s, best {max(rate):6.2f}  "
            f"({' '.join(f'{r:.2f}' for r in rate)})"
        )
    for engine in engines:
        engine.close()


if __name__ == "__main__":
    main()
