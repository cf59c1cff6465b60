"""Aggregate decode with n concurrent requests beside batch 1, on the engine's scheduler (issue #16 item 2).

    .venv/bin/python bench/bench_batched_decode.py --preset small --batches 1,8 --tokens 16

Random weights made in memory (no checkpoint on disk), float32 by default, text prompts, no stop token.
The decode forward timed two ways on the same weights, in the same run: attention row by row over each
request's own contiguous buffer (the reference layout) and the engine's packed step over the paged KV pool
(one attention call per layer for all rows, keys gathered from their blocks). Then the engine's aggregate
decode at each batch size. The ratio n-way / batch 1 is what batching is for. The machine is shared: figures
are indicative; compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json

import torch

from pixtral.benchmark import decode_rate
from pixtral.config import preset
from pixtral.engine import Engine
from pixtral.engine.scheduler import SchedulerConfig
from pixtral.gpu_check import random_model_on
from pixtral.prompt.tokenizer import load_tokenizer


@torch.inference_mode()
def forward_ms(model, batch: int, context: int, pooled: bool, steps: int = 5) -> float:
    """Milliseconds of one decode forward of `batch` rows with `context` cached positions each (no threads,
    no sampling): the model's own cost, the attention path included."""
    from pixtral.benchmark import best_of
    from pixtral.model.kv_cache import PagedBatch, PagedKVPool, SequenceKVCache
    from pixtral.model.pixtral import no_images

    if pooled:
        block = SchedulerConfig().kv_block_size
        pool = PagedKVPool.for_model(model, batch * (-(-(context + 1) // block)), block)
        tables: list[list[int]] = [[] for _ in range(batch)]
        for t in tables:
            pool.grow(t, context + 1)
        ids = torch.full((1, batch), 1100, device=model.device)

        def step():  # what the scheduler does per decode step: build the batch, run the packed forward
            paged = PagedBatch.build(pool, [(t, context, 1) for t in tables])
            model(ids, image_mask=no_images(ids), caches=paged, logits_index=torch.arange(batch))

        return 1e3 * best_of(step, steps)
    caches = [SequenceKVCache.for_model(model, context + steps) for _ in range(batch)]
    for c in caches:
        c.length = context  # the cached values do not change the cost
    ids = torch.full((batch, 1), 1100, device=model.device)

    def step():
        model(ids, image_mask=no_images(ids), caches=caches)
        for c in caches:
            c.length -= 1  # stay at the same context

    return 1e3 * best_of(step, steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=["tiny", "small"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--forward-only", action="store_true", help="only the forward timings, not the engine's")
    ap.add_argument("--context", type=int, default=512, help="cached positions per row in the forward timing")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = random_model_on(torch.device("cpu"), preset(args.preset), getattr(torch, args.dtype))
    batches = [int(b) for b in args.batches.split(",")]
    for b in batches:
        own, pooled = (forward_ms(model, b, args.context, p) for p in (False, True))
        print(f"decode forward, {b:>3} rows x {args.context} cached positions: row by row {own:8.1f} ms, "
              f"paged pool {pooled:8.1f} ms ({own / pooled:.2f}x)")  # fmt: skip
    if args.forward_only:
        return
    results = {}
    for mode in ("paged",):
        config = SchedulerConfig(kv_budget_bytes=4 * 1024**3)
        engine = Engine(model, load_tokenizer(None), scheduler=config)
        decode_rate(engine, 1, 2)  # warm-up
        results[mode] = {b: decode_rate(engine, b, args.tokens)[0] for b in batches}
        engine.close()
    for mode, rates in results.items():
        base = rates[batches[0]]
        for b, r in rates.items():
            print(f"{args.preset} {args.dtype} {mode:>10}: {b:>3} concurrent: {r:8.2f} tok/s aggregate "
                  f"({r / base:.2f}x batch {batches[0]})")  # fmt: skip
    print(json.dumps({"preset": args.preset, "dtype": args.dtype, "threads": torch.get_num_threads(),
                      "tokens_per_s": results}))  # fmt: skip


if __name__ == "__main__":
    main()
