"""Training throughput of `pixtral.train` on this machine: tokens/s per preset and mode, beside the model
FLOP rate it implies (6 N per token for full training, 4 N for LoRA;
N = decoder parameters a token passes through) and this machine's measured
fp32 matmul rate (the physical limit for this code path).

    python bench/bench_train.py                       # tiny full + small LoRA, seq_len 256
    python bench/bench_train.py --preset small --mode full --steps 3

Synthetic data: conversations of one 64x64 image, a question and a ~100-token answer, packed into rows.
The first step (allocations, tokenizer warm-up) is not timed.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from pixtral.config import preset
from pixtral.train.config import make_config
from pixtral.train.loop import train

WORDS = "the a chart shows sales revenue growth in per cent year quarter north south east west total".split()


def synthetic_data(folder: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.new("RGB", (64, 64), tuple(rng.randrange(256) for _ in range(3))).save(path)
        question = " ".join(rng.choice(WORDS) for _ in range(20))
        answer = " ".join(rng.choice(WORDS) for _ in range(80))
        rows.append(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": path.name}},
                            {"type": "text", "text": question},
                        ],
                    },
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    out = folder / "data.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def matmul_gflops(n: int = 1024, repeat: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * n**3 * repeat / (time.perf_counter() - t0) / 1e9


def run(name: str, mode: str, steps: int, seq_len: int, batch: int, threads: int) -> dict:
    cfg_model = preset(name)
    counts = cfg_model.num_parameters()
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_data(Path(tmp), 4 * batch * (steps + 1))
        cfg = make_config(
            None,
            {
                "model": f"preset:{name}",
                "data": str(data),
                "out_dir": f"{tmp}/run",
                "seq_len": seq_len,
                "pack": True,
                "batch_size": batch,
                "micro_batch_size": 1,
                "max_steps": steps + 1,
                "mode": mode,
                "lr": 1e-4,
                "warmup_steps": 1,
                "precision": "fp32",
                "device": "cpu",
                "threads": threads,
                "progress": False,
                "tensorboard": False,
                "export_formats": ["native"],
            },
        )
        result = train(cfg)
    tokens_per_s = result.tokens_per_s
    # every token passes through the decoder (embedding lookups excluded) and the output layer
    n = counts["decoder"] - cfg_model.text.vocab_size * cfg_model.text.dim
    flops_per_token = (6 if mode == "full" else 4) * n  # LoRA computes no weight gradients for the base
    return {
        "preset": name,
        "mode": mode,
        "seq_len": seq_len,
        "rows_per_step": batch,
        "steps_timed": steps,
        "tokens_per_s": round(tokens_per_s, 1),
        "model_gflops": round(flops_per_token * tokens_per_s / 1e9, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", action="append", help="tiny, small (repeatable); default: tiny and small")
    p.add_argument("--mode", default=None, help="full or lora; default: full for tiny, lora for small")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=2, help="rows per optimizer step")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    limit = matmul_gflops()
    print(f"machine: {torch.get_num_threads()} threads, fp32 matmul {limit:.1f} GFLOP/s (the limit)")
    for name in args.preset or ["tiny", "small"]:
        mode = args.mode or ("full" if name == "tiny" else "lora")
        r = run(name, mode, args.steps, args.seq_len, args.batch, args.threads)
        r["share_of_matmul_limit"] = round(r["model_gflops"] / limit, 3)
        print(json.dumps(r))


if __name__ == "__main__":
    main()
