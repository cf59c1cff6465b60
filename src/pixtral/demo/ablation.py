"""The native-resolution ablation at small scale (docs/ablation.md): two vision front ends trained through the
same curriculum on the same data, from the same initial weights, for the same number of optimizer steps.

    python -m pixtral.demo.ablation prepare --root runs/ablation     # data (native + resized copies), init
    python -m pixtral.demo.ablation train --root runs/ablation --arm native    # resumable: rerun to go on
    python -m pixtral.demo.ablation train --root runs/ablation --arm fixed
    python -m pixtral.demo.ablation eval --root runs/ablation --arm native
    python -m pixtral.demo.ablation eval --root runs/ablation --arm fixed
    python -m pixtral.demo.ablation report --root runs/ablation --out docs/images/ablation.png

(a) `native`: the demo architecture (Pixtral-ViT, native resolution, RoPE-2D), trained by `pixtral train`'s
    loop unchanged. (b) `fixed`: the same model with `FixedResolutionEncoder` (every image resized to
    128 x 128 before tokenization, learned absolute positions). Both start from the same random initial
    checkpoint (`pixtral.demo.recipe.write_init`); the baseline's position table is the only extra tensor.

The curriculum is the demo model's (docs/demo-model.md): one big shape's colour, the warm-up tasks, then the
fine tasks (documents, tables, charts) and the coarse ones (shapes) mixed with the warm-up tasks.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open

import pixtral.train.loop as loop
from pixtral.checkpoint.loader import load_model
from pixtral.demo.fixed_resolution import (
    POS_NAME,
    SIDE,
    load_fixed_resolution,
    resize_jsonl,
    swap_in_fixed_encoder,
)
from pixtral.demo.recipe import mix_jsonl, write_init
from pixtral.engine.engine import Engine
from pixtral.engine.sampling import SamplingParams
from pixtral.evals.stats import paired_difference
from pixtral.evals.tasks.synthetic import exact_match
from pixtral.prompt.tokenizer import load_tokenizer
from pixtral.synthetic import generate, write_jsonl
from pixtral.train.checkpointing import latest_checkpoint
from pixtral.train.config import make_config
from pixtral.train.data import Record, encode_conversation

FINE = ["doc_number", "doc_word", "table_cell", "bar_value", "line_value"]
COARSE = ["shape_count", "shape_colour", "compare_count", "followup_shapes"]
WARMUP = ["big_shape_colour", "big_shape_kind", "big_shape_total"]
MAX_SIDE = 192
ARMS = ("native", "fixed")

# folder -> (split, conversations, tasks); `pixtral.synthetic.generate`, seed 0, images of at most MAX_SIDE px
DATA: dict[str, tuple[str, int, list[str]]] = {
    "colour": ("train", 3000, ["big_shape_colour"]),
    "warmup": ("train", 12000, WARMUP),
    "coarse": ("train", 30000, COARSE),
    "fine": ("train", 15000, FINE),
    "test-fine": ("test", 250, FINE),
    "test-coarse": ("test", 200, COARSE),
    "test-warmup": ("test", 150, WARMUP),
}
MIXED = ("fine", "coarse", "warmup")  # shuffled together into ARM/mixed.jsonl (the same order for both arms)
TEST_SETS = ("test-fine", "test-coarse", "test-warmup")


@dataclass(frozen=True)
class Stage:
    name: str
    data: str  # a DATA folder's train.jsonl, or "mixed"
    steps: int


STAGES = (Stage("stage1", "colour", 300), Stage("stage2", "warmup", 800), Stage("stage3", "mixed", 9000))

# The training recipe of both arms, every stage (pixtral train fields; the demo model's, docs/demo-model.md).
TRAIN_FIELDS: dict[str, Any] = {
    "seq_len": 1024,
    "pack": True,
    "batch_size": 2,
    "micro_batch_size": 2,
    "lr": 1e-3,
    "warmup_steps": 20,
    "min_lr_ratio": 0.1,
    "weight_decay": 0.1,
    "grad_clip": 1.0,
    "seed": 0,
    "threads": 1,
    "device": "auto",
    "save_every": 250,
    "keep_last": 2,
    "export_formats": ["native"],
    "export_dtype": "float32",
    "progress": False,
    "tensorboard": False,
}


def prepare(root: Path, side: int = SIDE) -> None:
    """root/native/FOLDER/ (the generator's images), root/fixed/FOLDER/ (the same rows, images resized to
    side x side), root/ARM/mixed.jsonl and root/init (random weights + tokenizer). Skips what exists."""
    for folder, (split, n, tasks) in DATA.items():
        native = root / "native" / folder
        if not (native / f"{split}.jsonl").exists():
            write_jsonl(native, list(generate(split, n, seed=0, max_side=MAX_SIDE, tasks=tasks)))
        if not (root / "fixed" / folder / f"{split}.jsonl").exists():
            resize_jsonl(native / f"{split}.jsonl", root / "fixed" / folder, side)
    for arm in ARMS:
        if not (root / arm / "mixed.jsonl").exists():
            mix_jsonl(root / arm / "mixed.jsonl", [root / arm / f / "train.jsonl" for f in MIXED])
    if not (root / "init").exists():
        write_init(root / "init")


def stage_data(root: Path, arm: str, stage: Stage) -> Path:
    return root / arm / ("mixed.jsonl" if stage.data == "mixed" else f"{stage.data}/train.jsonl")


def stage_dir(root: Path, arm: str, stage: Stage) -> Path:
    return root / f"train-{arm}" / stage.name


def has_position_table(folder: Path) -> bool:
    with safe_open(str(folder / "consolidated.safetensors"), "pt") as f:
        return POS_NAME in f.keys()


def train_arm(root: Path, arm: str, threads: int | None = None, stage3_steps: int | None = None) -> Path:
    """Run (or resume) every stage of one arm; each starts from the previous stage's export. -> final folder."""
    if arm not in ARMS:
        raise SystemExit(f"unknown arm {arm!r}: native or fixed")
    stock = loop.build_model

    def build_fixed(c):  # stage 1: the stock loader, then the baseline encoder; later stages: its export
        folder = Path(c.model)
        if has_position_table(folder):
            return load_fixed_resolution(folder).train(), load_tokenizer(folder), folder, None
        model, tokenizer, tok_dir, dtype = stock(c)
        return swap_in_fixed_encoder(model), tokenizer, tok_dir, dtype

    start = root / "init"
    try:
        if arm == "fixed":
            loop.build_model = build_fixed
        for i, stage in enumerate(STAGES):
            out = stage_dir(root, arm, stage)
            steps = stage3_steps if (stage3_steps and i == len(STAGES) - 1) else stage.steps
            if not (out / "final" / "params.json").exists():
                fields = dict(TRAIN_FIELDS, max_steps=steps, threads=threads or TRAIN_FIELDS["threads"])
                cfg = make_config(
                    overrides={
                        **fields,
                        "model": str(start),
                        "data": str(stage_data(root, arm, stage)),
                        "out_dir": str(out),
                    }
                )
                loop.train(cfg, resume=latest_checkpoint(out) is not None)
            start = out / "final"
    finally:
        loop.build_model = stock
    return start


def load_arm(root: Path, arm: str, folder: Path | None = None):
    """-> (model, tokenizer) of an arm's last stage (or of `folder`, an exported model of that arm)."""
    folder = folder or stage_dir(root, arm, STAGES[-1]) / "final"
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


def blanked(row: dict[str, Any], base: Path, scratch: Path) -> dict[str, Any]:
    """The row with every image replaced by a white one of the same size (written under scratch)."""
    row = json.loads(json.dumps(row))
    for m in row["messages"]:
        for p in m["content"] if isinstance(m["content"], list) else []:
            if p.get("type") == "image_url":
                with Image.open(base / p["image_url"]["url"]) as im:
                    size = im.size
                target = scratch / f"white-{size[0]}x{size[1]}.png"
                if not target.exists():
                    Image.new("RGB", size, (255, 255, 255)).save(target)
                p["image_url"]["url"] = str(target)
    return row


def answer_nll(model, tokenizer, row: dict[str, Any], base: Path) -> float:
    """Mean negative log-likelihood (nats) of the row's assistant tokens, teacher-forced."""
    sample, images = encode_conversation(Record(row["messages"], row["id"], base), tokenizer)
    ids = torch.tensor(sample.token_ids)
    with torch.inference_mode():
        logits = model(ids[None], images=[torch.from_numpy(im) for im in images])[0]  # (T, vocab)
    target = torch.tensor(sample.loss_mask[1:])  # token t+1 is predicted at t
    return F.cross_entropy(logits[:-1][target], ids[1:][target]).item()


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


def evaluate_jsonl(model, tokenizer, jsonl: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Greedy answers through pixtral.engine.Engine, exact match (the synthetic task's rule), and the
    answer's teacher-forced NLL with the real images and with white ones of the same sizes."""
    engine = Engine(model, tokenizer, model_name="ablation")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()][:limit]
    items = []
    with tempfile.TemporaryDirectory() as scratch:
        for row in rows:
            out = engine.generate(
                prompt_messages(row, jsonl.parent), SamplingParams(temperature=0.0, max_tokens=16)
            ).text
            items.append(
                {
                    "id": row["id"],
                    "task": row["task"],
                    "answer": row["answer"],
                    "prediction": out,
                    "exact": exact_match(out, [row["answer"]]),
                    "similarity": char_similarity(out, row["answer"]),
                    "nll": answer_nll(model, tokenizer, row, jsonl.parent),
                    "nll_blank": answer_nll(
                        model, tokenizer, blanked(row, jsonl.parent, Path(scratch)), Path()
                    ),
                }
            )
    engine.close()
    return items


def group_of(task: str) -> str:
    return "fine" if task in FINE else "coarse" if task in COARSE else "warm-up"


def summarise(items: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for it in items:
        groups[it["task"]].append(it)
        groups[group_of(it["task"])].append(it)
    return {
        k: {
            "n": len(v),
            "exact": sum(i["exact"] for i in v) / len(v),
            "similarity": sum(i["similarity"] for i in v) / len(v),
            "nll": sum(i["nll"] for i in v) / len(v),
            "image_gain": sum(i["nll_blank"] - i["nll"] for i in v) / len(v),
        }
        for k, v in groups.items()
    }


def evaluate_arm(
    root: Path, arm: str, folder: Path | None = None, limit: int | None = None
) -> dict[str, Any]:
    model, tokenizer = load_arm(root, arm, folder)
    t0 = time.perf_counter()
    items = []
    for name in TEST_SETS:
        items += evaluate_jsonl(model, tokenizer, root / arm / name / "test.jsonl", limit)
    return {"items": items, "summary": summarise(items), "seconds": time.perf_counter() - t0}


def majority_answers(root: Path) -> dict[str, str]:
    """Each task's most frequent answer in the last stage's training data: what answering blind scores."""
    counts: dict[str, Counter] = defaultdict(Counter)
    with (root / "native" / "mixed.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            counts[row["task"]][row["answer"]] += 1
    return {task: c.most_common(1)[0][0] for task, c in counts.items()}


def report(root: Path, out_png: Path | None) -> str:
    """The per-task table, the paired (a) − (b) differences per group, and the plot."""
    results = {arm: json.loads((root / f"eval-{arm}.json").read_text()) for arm in ARMS}
    majority = majority_answers(root)
    blind: dict[str, list[float]] = defaultdict(list)
    for it in results["native"]["items"]:
        score = exact_match(majority.get(it["task"], ""), [it["answer"]])
        blind[it["task"]].append(score)
        blind[group_of(it["task"])].append(score)
    lines = [
        "| task | kind | n | blind (majority answer) | (a) native: exact | (b) fixed 128²: exact "
        "| (a) image gain | (b) image gain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in [*FINE, "fine", *COARSE, "coarse", *WARMUP, "warm-up"]:
        a, b = results["native"]["summary"][key], results["fixed"]["summary"][key]
        task = key in FINE + COARSE + WARMUP
        name, kind = (key, group_of(key)) if task else (f"**{key}**", "**all**")
        lines.append(
            f"| {name} | {kind} | {a['n']} | {sum(blind[key]) / len(blind[key]):.1%} | {a['exact']:.1%} | "
            f"{b['exact']:.1%} | {a['image_gain']:+.3f} | {b['image_gain']:+.3f} |"
        )
    lines += [
        "",
        "| group | (a) − (b) exact match, 95% CI | P(b ≥ a) | (a) − (b) image gain, 95% CI | (a) − (b) answer NLL |",
        "|---|---|---|---|---|",
    ]
    # ids restart at 0 in each test set: (task, id) names an item
    by_id = {arm: {(it["task"], it["id"]): it for it in results[arm]["items"]} for arm in ARMS}
    for group in ("fine", "coarse", "warm-up"):
        ids = [i for i, it in by_id["native"].items() if group_of(it["task"]) == group]
        clusters = ["/".join(i) for i in ids]
        pairs = [(by_id["fixed"][i], by_id["native"][i]) for i in ids]
        ex = paired_difference([b["exact"] for b, _ in pairs], [a["exact"] for _, a in pairs], clusters, 2000)
        gain = paired_difference(
            [b["nll_blank"] - b["nll"] for b, _ in pairs],
            [a["nll_blank"] - a["nll"] for _, a in pairs],
            clusters,
            2000,
        )
        nll = sum(a["nll"] - b["nll"] for b, a in pairs) / len(pairs)
        lines.append(
            f"| {group} (n = {len(ids)}) | {ex['diff']:+.1%} [{ex['low']:+.1%}, {ex['high']:+.1%}] | "
            f"{ex['p_le_0']:.3f} | {gain['diff']:+.3f} [{gain['low']:+.3f}, {gain['high']:+.3f}] | {nll:+.3f} |"
        )
    if out_png is not None:
        plot(results, out_png, learning_curve(root))
    return "\n".join(lines)


ARM_STYLE = {
    "native": ("(a) native resolution + RoPE-2D", "#1f77b4"),
    "fixed": (f"(b) fixed {SIDE}x{SIDE} + learned abs. pos.", "#ff7f0e"),
}


def learning_curve(root: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """arm -> stage-3 step -> summary, from root/curve/ARM-STEP.json (`eval --model ... --out` of exported
    intermediate checkpoints); the last stage's final model counts at its last step."""
    curve: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for path in sorted((root / "curve").glob("*-*.json")):
        arm, _, step = path.stem.partition("-")
        if arm in ARMS and step.isdigit():
            curve[arm][int(step)] = json.loads(path.read_text())["summary"]
    for arm in ARMS:
        final = root / f"eval-{arm}.json"
        done = stage_dir(root, arm, STAGES[-1]) / "final"
        if curve[arm] and final.exists() and done.exists():
            steps = json.loads((stage_dir(root, arm, STAGES[-1]) / "train_config.json").read_text())[
                "max_steps"
            ]
            curve[arm][steps] = json.loads(final.read_text())["summary"]
    return curve


def plot(
    results: dict[str, Any], out_png: Path, curve: dict[str, dict[int, dict[str, Any]]] | None = None
) -> None:
    import matplotlib  # optional: only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [*FINE, "fine", *COARSE, "coarse", *WARMUP, "warm-up"]
    panels = 3 if curve and any(curve.values()) else 2
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.6))
    width = 0.38
    for ax, metric, title in (
        (axes[0], "exact", "exact match (greedy answers)"),
        (axes[1], "image_gain", "image gain: answer NLL, white images − real ones (nats/token)"),
    ):
        for j, arm in enumerate(ARMS):
            label, colour = ARM_STYLE[arm]
            vals = [results[arm]["summary"][k][metric] for k in keys]
            xs = [i + (j - 0.5) * width for i in range(len(keys))]
            ax.bar(xs, vals, width, label=label, color=colour)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(keys, rotation=35, ha="right", fontsize=8)
        for x in (len(FINE) + 1.5, len(FINE) + len(COARSE) + 2.5):
            ax.axvline(x, color="grey", lw=0.8, ls="--")
        ax.set_title(title, fontsize=10)
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=8, loc="upper left")
    if panels == 3:
        ax = axes[2]
        for arm in ARMS:
            label, colour = ARM_STYLE[arm]
            steps = sorted(curve[arm])
            for group, style in (("fine", "-"), ("coarse", "--")):
                ax.plot(steps, [curve[arm][s][group]["image_gain"] for s in steps], style, color=colour,
                        marker="o", ms=3, label=f"{label.split(' ', 1)[0]} {group}")  # fmt: skip
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("stage-3 optimizer steps")
        ax.set_title("image gain during stage 3 (fine: solid, coarse: dashed)", fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(
        "Native-resolution ablation, small scale (same curriculum, data, steps, parameters)", fontsize=11
    )
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(
        prog="python -m pixtral.demo.ablation", description=__doc__.split("\n")[0]
    )
    parser.add_argument("action", choices=["prepare", "train", "eval", "report"])
    parser.add_argument("--root", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--arm", choices=ARMS)
    parser.add_argument(
        "--threads", type=int, help="torch threads (default 1: run the two arms side by side)"
    )
    parser.add_argument(
        "--stage3-steps", type=int, help=f"optimizer steps of the last stage ({STAGES[-1].steps})"
    )
    parser.add_argument(
        "--model", type=Path, help="eval: this exported folder of the arm instead of its last stage"
    )
    parser.add_argument("--limit", type=int, help="eval: the first N items of each test set")
    parser.add_argument(
        "--out",
        type=Path,
        help="eval: the results' JSON (default ROOT/eval-ARM.json); report: the plot's PNG",
    )
    args = parser.parse_args(argv)
    if args.action in ("train", "eval") and not args.arm:
        parser.error(f"{args.action} needs --arm native or --arm fixed")
    torch.set_num_threads(args.threads or 1)
    if args.action == "prepare":
        prepare(args.root)
    elif args.action == "train":
        print(train_arm(args.root, args.arm, args.threads, args.stage3_steps))
    elif args.action == "eval":
        res = evaluate_arm(args.root, args.arm, args.model, args.limit)
        out = args.out or args.root / f"eval-{args.arm}.json"
        out.parent.mkdir(parents=True, exist_ok=True)  # e.g. ROOT/curve/ for the learning curve
        out.write_text(json.dumps(res, indent=1) + "\n")
        for k, v in res["summary"].items():
            print(
                f"{k:16s} n={v['n']:4d} exact={v['exact']:.3f} nll={v['nll']:.3f} gain={v['image_gain']:+.3f}"
            )
    else:
        print(report(args.root, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
