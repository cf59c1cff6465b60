"""The native-resolution ablation at small scale (docs/ablation.md): two vision front ends, the same data,
parameter count (+0.3%), initial weights and optimizer steps.

    python -m pixtral.demo.ablation prepare --root runs/ablation     # data: native and resized-square copies
    python -m pixtral.demo.ablation train --root runs/ablation --arm native [--resume]
    python -m pixtral.demo.ablation train --root runs/ablation --arm fixed  [--resume]
    python -m pixtral.demo.ablation eval --root runs/ablation --arm native
    python -m pixtral.demo.ablation eval --root runs/ablation --arm fixed
    python -m pixtral.demo.ablation report --root runs/ablation --out docs/images/ablation.png

(a) `native`: the demo architecture (Pixtral-ViT, native resolution, RoPE-2D), trained by `pixtral train`'s
    loop unchanged. (b) `fixed`: the same model with `FixedResolutionEncoder` (every image resized to
    128 x 128 before tokenization, learned absolute positions). Both start from the same random initial
    checkpoint (`pixtral.demo.recipe.write_init`); the baseline's position table is the only extra tensor.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from pixtral.demo.fixed_resolution import SIDE, resize_jsonl

FINE = ["doc_number", "doc_word", "table_cell", "bar_value", "line_value"]
COARSE = ["shape_count", "shape_colour", "compare_count"]
TASKS = FINE + COARSE
MAX_SIDE = 192
N_TRAIN = 6000
N_TEST = 240  # 30 per task

# The training recipe of both arms (pixtral train fields).
TRAIN_FIELDS: dict[str, Any] = {
    "seq_len": 512,
    "pack": True,
    "batch_size": 4,
    "micro_batch_size": 4,
    "max_steps": 300,
    "lr": 2e-3,
    "warmup_steps": 20,
    "min_lr_ratio": 0.1,
    "weight_decay": 0.01,
    "grad_clip": 1.0,
    "seed": 0,
    "threads": 2,
    "device": "cpu",
    "save_every": 25,
    "keep_last": 2,
    "export_formats": ["native"],
    "export_dtype": "float32",
    "progress": False,
    "tensorboard": False,
}


def prepare(root: Path, n_train: int = N_TRAIN, n_test: int = N_TEST, side: int = SIDE) -> None:
    """root/native/{train,test}/ (the generator's images) and root/fixed/{train,test}/ (resized squares)."""
    from pixtral.demo.recipe import write_init
    from pixtral.synthetic import generate, write_jsonl

    for split, n, folder in (("train", n_train, "train"), ("test", n_test, "test")):
        native = root / "native" / folder
        if not (native / f"{split}.jsonl").exists():
            write_jsonl(native, list(generate(split, n, seed=0, max_side=MAX_SIDE, tasks=TASKS)))
        fixed = root / "fixed" / folder
        if not (fixed / f"{split}.jsonl").exists():
            resize_jsonl(native / f"{split}.jsonl", fixed, side)
    if not (root / "init").exists():
        write_init(root / "init")


def train_arm(
    root: Path, arm: str, resume: bool = False, max_steps: int | None = None, threads: int | None = None
) -> Any:
    import pixtral.train.loop as loop
    from pixtral.demo.fixed_resolution import swap_in_fixed_encoder
    from pixtral.train.config import make_config

    fields = dict(TRAIN_FIELDS)
    if max_steps:
        fields["max_steps"] = max_steps
    if threads:
        fields["threads"] = threads
    cfg = make_config(
        overrides={
            **fields,
            "model": str(root / "init"),
            "data": str(root / arm / "train" / "train.jsonl"),
            "out_dir": str(root / f"train-{arm}"),
        }
    )
    if arm == "fixed":
        original = loop.build_model

        def build_fixed(c):  # the stock loader, then the baseline encoder (same weights + position table)
            model, tokenizer, tok_dir, dtype = original(c)
            return swap_in_fixed_encoder(model), tokenizer, tok_dir, dtype

        loop.build_model = build_fixed
    elif arm != "native":
        raise SystemExit(f"unknown arm {arm!r}: native or fixed")
    return loop.train(cfg, resume=resume)


def load_arm(root: Path, arm: str, checkpoint: str | None = None):
    """-> (model, tokenizer) of an arm's exported model (or a checkpoint folder's weights)."""
    from pixtral.checkpoint.loader import load_model
    from pixtral.demo.fixed_resolution import load_fixed_resolution
    from pixtral.prompt.tokenizer import load_tokenizer

    folder = Path(checkpoint) if checkpoint else root / f"train-{arm}" / "final"
    tokenizer = load_tokenizer(root / "init")
    if arm == "fixed":
        return load_fixed_resolution(folder), tokenizer
    model, _ = load_model(folder, "float32")
    return model, tokenizer


def prompt_messages(row: dict[str, Any], base: Path) -> list[dict[str, Any]]:
    """A JSONL row -> the messages to answer (the last assistant turn removed, image paths absolute)."""
    messages = json.loads(json.dumps(row["messages"][:-1]))
    for m in messages:
        if isinstance(m["content"], list):
            for p in m["content"]:
                if p.get("type") == "image_url":
                    p["image_url"]["url"] = str((base / p["image_url"]["url"]).resolve())
    return messages


def char_similarity(a: str, b: str) -> float:
    """1 - Levenshtein(a, b) / max(len): partial credit for almost-read numbers and words."""
    a, b = a.strip().lower(), b.strip().lower()
    if not a and not b:
        return 1.0
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return 1.0 - prev[-1] / max(len(a), len(b))


def evaluate_jsonl(model, tokenizer, jsonl: Path, limit: int | None = None) -> dict[str, Any]:
    """Greedy answers through pixtral.engine.Engine, exact match (the synthetic task's rule) per task."""
    from pixtral.engine.engine import Engine
    from pixtral.engine.sampling import SamplingParams
    from pixtral.evals.tasks.synthetic import exact_match

    engine = Engine(model, tokenizer, model_name="ablation")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()][:limit]
    items = []
    t0 = time.perf_counter()
    for row in rows:
        out = engine.generate(
            prompt_messages(row, jsonl.parent), SamplingParams(temperature=0.0, max_tokens=16)
        ).text
        items.append(
            {
                "id": row["id"],
                "task": row["task"],
                "granularity": row["granularity"],
                "answer": row["answer"],
                "prediction": out,
                "exact": exact_match(out, [row["answer"]]),
                "similarity": char_similarity(out, row["answer"]),
            }
        )
    return {"items": items, "summary": summarise(items), "seconds": time.perf_counter() - t0}


def summarise(items: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for it in items:
        groups[it["task"]].append(it)
        groups[it["granularity"]].append(it)
        groups["overall"].append(it)
    return {
        k: {
            "n": len(v),
            "exact": sum(i["exact"] for i in v) / len(v),
            "similarity": sum(i["similarity"] for i in v) / len(v),
        }
        for k, v in groups.items()
    }


def report(root: Path, out_png: Path | None) -> str:
    results = {arm: json.loads((root / f"eval-{arm}.json").read_text()) for arm in ("native", "fixed")}
    lines = [
        "| task | kind | n | (a) native + RoPE-2D: exact | (b) fixed 128² + abs. pos.: exact "
        "| (a) char sim. | (b) char sim. |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in [*FINE, *COARSE, "fine", "coarse", "overall"]:
        a, b = results["native"]["summary"][key], results["fixed"]["summary"][key]
        kind = "fine" if key in FINE else "coarse" if key in COARSE else "**all**"
        name = key if key in TASKS else f"**{key}**"
        lines.append(
            f"| {name} | {kind} | {a['n']} | {a['exact']:.1%} | {b['exact']:.1%} | "
            f"{a['similarity']:.2f} | {b['similarity']:.2f} |"
        )
    table = "\n".join(lines)
    if out_png is not None:
        plot(results, out_png)
    return table


def plot(results: dict[str, Any], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [*FINE, "fine", *COARSE, "coarse"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.38
    for ax, metric, title in (
        (axes[0], "exact", "exact match"),
        (axes[1], "similarity", "character similarity (1 - edit distance / length)"),
    ):
        for j, (arm, label, colour) in enumerate(
            (
                ("native", "(a) native resolution + RoPE-2D", "#1f77b4"),
                ("fixed", f"(b) fixed {SIDE}x{SIDE} + learned abs. pos.", "#ff7f0e"),
            )
        ):
            vals = [results[arm]["summary"][k][metric] for k in keys]
            xs = [i + (j - 0.5) * width for i in range(len(keys))]
            ax.bar(xs, vals, width, label=label, color=colour)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(keys, rotation=35, ha="right", fontsize=8)
        ax.axvline(len(FINE) + 0.5, color="grey", lw=0.8, ls="--")
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle("Native-resolution ablation, small scale (same data, steps, parameters)", fontsize=11)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)


def main(argv: list[str] | None = None) -> int:
    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(
        prog="python -m pixtral.demo.ablation", description=__doc__.split("\n")[0]
    )
    parser.add_argument("action", choices=["prepare", "train", "eval", "report"])
    parser.add_argument("--root", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--arm", choices=["native", "fixed"])
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--threads", type=int, help="torch threads (default 2)")
    parser.add_argument("--checkpoint", help="evaluate this exported folder instead of train-ARM/final")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--out", type=Path, help="report: the plot's PNG path")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or 2)
    if args.action == "prepare":
        prepare(args.root)
    elif args.action == "train":
        train_arm(args.root, args.arm, args.resume, args.max_steps, args.threads)
    elif args.action == "eval":
        model, tokenizer = load_arm(args.root, args.arm, args.checkpoint)
        res = evaluate_jsonl(model, tokenizer, args.root / args.arm / "test" / "test.jsonl", args.limit)
        (args.root / f"eval-{args.arm}.json").write_text(json.dumps(res, indent=1) + "\n")
        for k, v in res["summary"].items():
            print(f"{k:16s} n={v['n']:4d} exact={v['exact']:.3f} sim={v['similarity']:.3f}")
    else:
        print(report(args.root, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
