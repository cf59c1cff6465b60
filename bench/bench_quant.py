"""Decode speed of weight-only quantization on this machine: GB/s of weights read per token, beside the
machine's measured read bandwidth (the ceiling of batch-1 decode).

    python bench/bench_quant.py                 # the 'small' preset's decoder linears, then the whole model
    python bench/bench_quant.py --no-model      # only the linear stack (less memory, ~1 min)
    python bench/bench_quant.py --json out.json

1. Linear stack: one token through every decoder linear of the 'small' preset (12 x wq wk wv wo w1 w3 w2)
   and the output head, as GEMVs of the right shapes: float32 (F.linear), bfloat16 (F.linear; @onednn: the
   prepacked oneDNN linear), int8 (`_weight_int8pack_mm`; @onednn: int8 x int8 `qlinear_pointwise`), int4
   groups 32/128 (`_weight_int4pack_mm_for_cpu`), timed round-robin so that every variant sees the same
   machine load; median of --reps tokens.
2. Whole model (on unless --no-model): the 'small' preset written as a random bf16 checkpoint, loaded in
   every --modes variant (weights@kernel, engine/cpu_kernels.py; quantized ones while loading) and held at
   once; --rounds rounds of batch-1 decode, modes in turn (8-token prompt, --tokens tokens with the KV
   cache); tok/s and effective GB/s = decoder bytes read per token x tok/s.
The machine is shared and noisy: each figure is a median; the read bandwidth is measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def stack_shapes(config) -> list[tuple[int, int]]:
    """(out, in) of every decoder linear, in the order one token visits them, then the output head."""
    t = config.text
    q, kv = t.n_heads * t.head_dim, t.n_kv_heads * t.head_dim
    layer = [
        (q, t.dim),
        (kv, t.dim),
        (kv, t.dim),
        (t.dim, q),
        (t.hidden_dim, t.dim),
        (t.hidden_dim, t.dim),
        (t.dim, t.hidden_dim),
    ]
    return layer * t.n_layers + [(t.vocab_size, t.dim)]


def bench_stack(config, variants: list[str], reps: int) -> list[dict]:
    """All variants are built first, then timed round-robin (one token each, `reps` rounds): on a shared
    machine whose load changes by the minute, every variant sees the same conditions."""
    from pixtral.engine.cpu_kernels import PackedLinear
    from pixtral.engine.quantize import Int4Linear, Int8Linear, can_quantize

    shapes = stack_shapes(config)
    tokens, sizes = {}, {}
    for variant in variants:
        gen = torch.Generator().manual_seed(0)  # the same weights for every variant
        layers = []
        for n, k in shapes:  # a float32 weight per layer, converted and dropped
            w = torch.randn(n, k, generator=gen) * 0.02
            if variant == "float32":
                layers.append(w)
            elif variant == "bfloat16":
                layers.append(w.to(torch.bfloat16))
            elif variant == "bfloat16@onednn":
                lin = nn.Linear(k, n, bias=False, device="meta")
                lin.weight = nn.Parameter(w.to(torch.bfloat16), requires_grad=False)
                layers.append(PackedLinear(lin))
            elif variant.startswith("int8"):
                layers.append(Int8Linear.from_weight(w))
                if variant == "int8@onednn":
                    layers[-1].use_onednn()
            elif can_quantize("int4", n, k, int(variant.split("g")[1])):
                layers.append(Int4Linear.from_weight(w, int(variant.split("g")[1])))
            else:  # as quantize_model_ does: a shape the int4 kernel cannot take stays in full precision
                layers.append(w.to(torch.bfloat16))
            del w
        sizes[variant] = sum(
            m.numel() * m.element_size() if isinstance(m, torch.Tensor) else m.weight_bytes() for m in layers
        )
        dtype = torch.float32 if variant in ("float32", "int8@onednn") else torch.bfloat16
        xs = {k: torch.randn(1, k, dtype=dtype) for k in {k for _, k in shapes}}

        def token(layers=layers, xs=xs) -> None:
            for m, (_, k) in zip(layers, shapes, strict=True):
                if isinstance(m, torch.Tensor):
                    F.linear(xs[k], m)
                else:
                    m(xs[k])

        tokens[variant] = token
    times: dict[str, list[float]] = {v: [] for v in variants}
    with torch.inference_mode():
        for v in variants:  # warm-up
            tokens[v]()
        for _ in range(reps):
            for v in variants:
                t0 = time.perf_counter()
                tokens[v]()
                times[v].append(time.perf_counter() - t0)
    rows = []
    for v in variants:
        t = sorted(times[v])[len(times[v]) // 2]
        rows.append(
            {
                "variant": v,
                "weight_gb": sizes[v] / 1e9,
                "ms_per_token": t * 1e3,
                "gb_per_s": sizes[v] / t / 1e9,
            }
        )
        print(json.dumps({"step": "stack", **rows[-1]}), flush=True)
    del tokens
    gc.collect()
    return rows


def load_variant(path: Path, mode: str):
    """'float32' | 'bfloat16' | 'int8' | 'int4-g32' ..., with '@aten' / '@onednn' / '@auto' for the CPU
    kernel (engine/cpu_kernels.py; no suffix: aten). Quantized models keep bfloat16 for the rest."""
    from pixtral.checkpoint.loader import load_model
    from pixtral.engine.cpu_kernels import apply_cpu_kernels_
    from pixtral.engine.quantize import load_quantized

    weights, _, kernel = mode.partition("@")
    if weights in ("float32", "bfloat16"):
        model, _ = load_model(path, weights)
    else:
        kind, _, g = weights.partition("-g")
        model, _, _ = load_quantized(path, kind, dtype="bfloat16", group_size=int(g or 128))
    choice = apply_cpu_kernels_(model, kernel or "aten")
    return model.eval(), choice


def bench_model(config, tokens: int, modes: list[str], rounds: int) -> list[dict]:
    """Every mode loaded at once, then `rounds` rounds of batch-1 decode (8-token prompt, `tokens` tokens
    with the KV cache), the modes stepping in turn; per mode the median step time over all rounds, and
    per mode its speed relative to float32 (or the first mode) step by step (median of the ratios)."""
    from pixtral.checkpoint.streaming_init import write_random_checkpoint_streaming
    from pixtral.engine.quantize import decoder_bytes_per_token
    from pixtral.model.kv_cache import SequenceKVCache

    tmp = Path(tempfile.mkdtemp(prefix="bench-quant-"))
    try:
        path = write_random_checkpoint_streaming(tmp / "m", config, torch.bfloat16, seed=0)
        models = {mode: load_variant(path, mode) for mode in modes}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ids = torch.randint(1000, config.text.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
    steps: dict[str, list[float]] = {m: [] for m in modes}
    with torch.inference_mode():
        for r in range(rounds):
            # every mode prefills, then they decode in lockstep: one step each in turn, so that a change of
            # machine load hits all of them alike (the shared machine's load changes by the second)
            state = {}
            for mode, (model, _) in models.items():
                cache = SequenceKVCache.for_model(model, 8 + tokens + 1)
                state[mode] = (cache, model(ids, caches=[cache], last_only=True)[:, -1])
            for _ in range(tokens):
                for mode, (model, _) in models.items():
                    cache, logits = state[mode]
                    tok = logits.argmax(-1)
                    t0 = time.perf_counter()
                    logits = model(tok[:, None], caches=[cache])[:, -1]
                    steps[mode].append(time.perf_counter() - t0)
                    state[mode] = (cache, logits)
            print(
                json.dumps(
                    {
                        "step": "round",
                        "round": r,
                        **{m: round(1 / statistics.median(t[-tokens:]), 2) for m, t in steps.items()},
                    }
                )
            )
            del state
    rows = []
    first = steps[modes[0]]
    for mode, (model, choice) in models.items():
        per_token = decoder_bytes_per_token(model)
        t = statistics.median(steps[mode])
        speedup = statistics.median(a / b for a, b in zip(first, steps[mode], strict=True))
        rows.append(
            {
                "mode": mode,
                "kernels": str(choice),
                "bytes_per_token_gb": per_token / 1e9,
                "tok_per_s": 1 / t,
                "gb_per_s": per_token / t / 1e9,
                f"speedup_vs_{modes[0]}": speedup,
            }
        )
        print(json.dumps({"step": "model", **rows[-1]}), flush=True)
    del models
    gc.collect()
    return rows


def main() -> None:
    from pixtral.benchmark import read_bandwidth_gbs
    from pixtral.config import preset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=["tiny", "small"])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-model", action="store_true", help="skip the whole-model decode")
    ap.add_argument("--no-stack", action="store_true", help="skip the linear stack")
    ap.add_argument(
        "--modes",
        default="float32,bfloat16@aten,bfloat16@onednn,int8@aten,int8@onednn,int4-g32",
        help="whole-model variants (weights@kernel), all held at once (~13 GB for 'small')",
    )
    ap.add_argument("--rounds", type=int, default=3, help="whole-model rounds, modes in turn")
    ap.add_argument(
        "--variants",
        default="float32,bfloat16,bfloat16@onednn,int8,int8@onednn,int4-g32,int4-g128",
        help="linear-stack variants, timed round-robin (all held at once: ~6.5 GB for 'small')",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = preset(args.preset)
    bw = read_bandwidth_gbs()
    print(json.dumps({"step": "machine", "read_gb_per_s": round(bw, 2), "threads": args.threads}), flush=True)
    stack = [] if args.no_stack else bench_stack(config, args.variants.split(","), args.reps)
    model = [] if args.no_model else bench_model(config, args.tokens, args.modes.split(","), args.rounds)
    bw_after = read_bandwidth_gbs()
    print(f"\nread bandwidth: {bw:.1f} GB/s before, {bw_after:.1f} GB/s after ({args.threads} threads)\n")
    print(f"linear stack of the '{args.preset}' preset (one token, {len(stack_shapes(config))} GEMVs):")
    print("| weights | GB read/token | ms/token | GB/s | % of read bandwidth |\n|---|---|---|---|---|")
    for r in stack:
        print(
            f"| {r['variant']} | {r['weight_gb']:.3f} | {r['ms_per_token']:.1f} | {r['gb_per_s']:.1f} | {100 * r['gb_per_s'] / bw:.0f}% |"
        )
    if model:
        print(f"\nwhole '{args.preset}' model, batch-1 decode with the KV cache:")
        first = args.modes.split(",")[0]
        print(
            f"| weights@kernel | GB read/token | tok/s | GB/s | % of read bandwidth | × {first} (step by step) |"
        )
        print("|---|---|---|---|---|---|")
        for r in model:
            print(
                f"| {r['mode']} | {r['bytes_per_token_gb']:.3f} | {r['tok_per_s']:.2f} | {r['gb_per_s']:.1f} | "
                f"{100 * r['gb_per_s'] / max(bw, bw_after):.0f}% | {r[f'speedup_vs_{first}']:.2f}× |"
            )
    if args.json:
        args.json.write_text(
            json.dumps({"read_gb_per_s": [bw, bw_after], "stack": stack, "model": model}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
