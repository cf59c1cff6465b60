"""Tensor parallelism on the CPU: peak memory per rank and decode speed, N = 1 beside N = 2 (and more).

    python bench/bench_tensor_parallel.py                        # the 1.1 B 'small' preset, bf16, N = 1, 2
    python bench/bench_tensor_parallel.py --sizes 1 2 4 --tokens 64 --dtype float32 --model DIR

Each N runs in a fresh process (rank 0; N = 2 spawns its other rank): it loads the checkpoint (each rank
reading only its shard), prefills a 64-token prompt and decodes `--tokens` tokens greedily with a KV cache.
Printed per N: peak RSS of every rank (VmHWM, minus the RSS after imports) and its ratio to one process
(target: <= 0.6 at N = 2), decode tokens/s, and the time rank 0 spends in the decoder's collectives per
decode step (all-reduce, the logits' gather). Ranks on one machine share its cores, so N = 2 on two busy
cores is not faster than N = 1: what tensor parallelism buys here is memory; speed needs a core (GPU) per
rank. Name the CPU and the load when you quote figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_RUN = r"""
import json, multiprocessing, sys, time, torch
path, dtype, size, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
from pixtral.checkpoint.loader import load_model
from pixtral.model.kv_cache import SequenceKVCache
from pixtral.model.pixtral import no_images
from pixtral.parallel.launch import LoadSpec, start
from pixtral.parallel.tensor_parallel import CommStats

def status(key, pid="self"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads() // size))
    base = status("VmRSS")
    if size == 1:
        model, _ = load_model(path, dtype=dtype)
    else:
        model, _ = start(LoadSpec(path, dtype, "cpu", threads=torch.get_num_threads()), size)
    ids = torch.randint(1000, model.config.text.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0))
    cache = SequenceKVCache.for_model(model, 64 + tokens + 1)
    with torch.inference_mode():
        nxt = model(ids, caches=[cache], last_only=True)[:, -1].argmax(-1, keepdim=True)
        CommStats.reset()
        t0 = time.perf_counter()
        for _ in range(tokens):
            nxt = model(nxt, image_mask=no_images(nxt), caches=[cache])[:, -1].argmax(-1, keepdim=True)
        seconds = time.perf_counter() - t0
    peaks = [status("VmHWM") - base] + [status("VmHWM", p.pid) - base for p in multiprocessing.active_children()]
    print(json.dumps({"size": size, "peaks": peaks, "tok_s": tokens / seconds,
                      "comm_ms_per_step": 1000 * CommStats.seconds / tokens, "comm_calls_per_step": CommStats.calls / tokens}))
    if size > 1:
        model.close()
"""


def run(path: Path, dtype: str, size: int, tokens: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _RUN, str(path), dtype, str(size), str(tokens)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import torch

    from pixtral.checkpoint.random_init import create_random_checkpoint
    from pixtral.config import preset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a checkpoint folder (default: a random 'small' preset)")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model
        if path is None:
            path = Path(tmp) / "small"
            create_random_checkpoint(path, preset("small"), dtype=torch.bfloat16)
        rows = [run(path, args.dtype, n, args.tokens) for n in args.sizes]
    one = max(rows[0]["peaks"]) if rows[0]["size"] == 1 else None
    print(
        f"model: {args.model or 'small preset (random, bf16 file)'}, dtype {args.dtype}, {args.tokens} tokens"
    )
    print(
        "| N | peak RSS per rank (GB) | max rank / one process | decode tok/s | collectives ms/step | target |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{max(r['peaks']) / one:.2f}" if one else "-"
        peaks = " / ".join(f"{p / 1e9:.2f}" for p in r["peaks"])
        target = "<= 0.6 at N = 2" if r["size"] == 2 else ""
        print(
            f"| {r['size']} | {peaks} | {ratio} | {r['tok_s']:.2f} | {r['comm_ms_per_step']:.2f} "
            f"({r['comm_calls_per_step']:.0f} calls) | {target} |"
        )


if __name__ == "__main__":
    main()
