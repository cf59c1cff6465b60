"""Metric throughput of the evaluation harness on synthetic answers (default 100k per family).

    .venv/bin/python bench/bench_eval_metrics.py [--n 100000] [--seed 0]

Prints items/s for: the CoT scorer (five parsing levels + anywhere, relaxed correctness) in both scoring modes,
ANLS (rapidfuzz Levenshtein) and VQA accuracy (EvalAI normaliser, 10-choose-9), plus the clustered bootstrap.
For scale: the largest benchmark, VQAv2 validation, has 214,354 items.
"""

from __future__ import annotations

import argparse
import random
import time

from pixtral.evals.metrics import COMPAT, FIXED, anls, vqa_match
from pixtral.evals.stats import bootstrap_ci
from pixtral.evals.tasks.chartqa import ChartQA

WORDS = "the chart shows a steady increase in sales over the years while costs remain flat".split()


def cot_answers(n: int, rng: random.Random) -> list[tuple[str, list[str]]]:
    out = []
    for _ in range(n):
        ref = rng.choice([str(rng.randint(0, 5000)), f"{rng.uniform(0, 100):.1f}%", rng.choice("ABCDE"),
                          rng.choice(["Yes", "No", "Paris", "blue"])])  # fmt: skip
        pred = ref if rng.random() < 0.6 else str(rng.randint(0, 5000))
        body = " ".join(rng.choices(WORDS, k=rng.randint(40, 200)))
        tail = rng.choice([f"\nFinal Answer: {pred}", f"\n**Final Answer:** {pred}", f"\nAnswer: {pred}.",
                           f" so it is {pred}.", ""])  # fmt: skip
        out.append((body + tail, [ref]))
    return out


def short_answers(n: int, rng: random.Random) -> list[tuple[str, list[str]]]:
    """Ten references per item drawn from a pool of n/2 distinct answers (so normaliser caches hit realistically)."""
    base = ["yes", "no", "2", "two", "red car", "the dog", "ITC Limited", "3:45 p.m.", "1,000", "don't know"]
    pool = [
        f"{rng.choice(base)} {rng.choice(WORDS)}{k}" if k % 3 else rng.choice(base) for k in range(n // 2)
    ]
    out = []
    for _ in range(n):
        refs = [rng.choice(pool) for _ in range(3)] * 3 + [rng.choice(pool)]
        pred = rng.choice([refs[0], refs[0].upper() + ".", "The answer is " + refs[1], "3"])
        out.append((pred, refs))
    return out


def timed(label: str, fn, data) -> None:
    """Wall-clock and CPU-time throughput (they differ when other processes share the cores)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    total = 0.0
    for answer, refs in data:
        total += fn(answer, refs)
    dt, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"{label:38s} {len(data) / dt:>10,.0f} items/s wall {len(data) / cpu:>10,.0f} items/s CPU"
          f"   (mean score {total / len(data):.4f})")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    cot = cot_answers(args.n, rng)
    short = short_answers(args.n, rng)
    task = ChartQA()
    print(f"{args.n:,} synthetic answers per family (seed {args.seed})")
    for mode in (FIXED, COMPAT):
        timed(
            f"CoT, all parsing levels [{mode}]",
            lambda a, r, m=mode: task.score(a, r, m).metrics["flex3"],
            cot,
        )
        timed(f"ANLS [{mode}]", lambda a, r, m=mode: anls(a, r[:3], m), short)
        timed(f"VQA accuracy, 10 refs [{mode}]", lambda a, r, m=mode: vqa_match(a, r, m), short)
    values = [rng.random() < 0.5 for _ in range(args.n)]
    start = time.perf_counter()
    bootstrap_ci([float(v) for v in values], [str(i // 2) for i in range(args.n)], n_boot=1000)
    print(
        f"{'clustered bootstrap, 1000 resamples':38s} {time.perf_counter() - start:>12.2f} s for {args.n:,} items"
    )


if __name__ == "__main__":
    main()
