"""The demo model's recipe: its architecture, the random initial checkpoint `pixtral train` starts from,
and the data it is trained and measured on.

    python -m pixtral.demo.recipe init --out runs/demo/init          # random weights + small tekken.json
    python -m pixtral.demo.recipe mix --out runs/demo/mixed.jsonl runs/demo/coarse/train.jsonl ...
    python -m pixtral.demo.recipe grow MODEL --out GROWN --vision-layers 2   # deeper, same outputs
    pixtral train --config runs/demo/stage3-mixed.toml                # see docs/demo-model.md

`scripts/train_demo_model.sh` runs the whole recipe (data, the six training stages, the evaluation).

The architecture is Pixtral's at a small size: a 3-layer NeMo-style decoder (dim 128, GQA 4/2 heads of 32),
a 2-layer Pixtral-ViT (hidden 64, 4 heads, RoPE-2D, native resolution), the GELU adapter, and a vocabulary
of the 1000 control tokens + the first 2000 tekken BPE ranks; `grow` makes it 4 + 4 layers before stage 5
(`bundled_config`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from pixtral.checkpoint.formats import copy_tokenizer_files, write_checkpoint
from pixtral.checkpoint.loader import open_checkpoint, save_model
from pixtral.config import PixtralConfig, TextConfig, VisionConfig
from pixtral.model.init import init_random_weights_
from pixtral.model.pixtral import Pixtral
from pixtral.synthetic.small_tokenizer import write_small_tokenizer

N_WORDS = 2000  # BPE ranks kept by the small tokenizer; vocab_size = 1000 + N_WORDS
MAX_SIDE = 192  # largest image side of the training data (12 x 12 patches)
DATA_SEED = 0


def demo_config(n_words: int = N_WORDS) -> PixtralConfig:
    """The demo model's shapes (about 1.5 M parameters: small enough to train on a busy 2-core CPU)."""
    return PixtralConfig(
        text=TextConfig(
            dim=128,
            n_layers=3,
            head_dim=32,
            hidden_dim=384,
            n_heads=4,
            n_kv_heads=2,
            vocab_size=1000 + n_words,
            rope_theta=10000.0,
            max_seq_len=8192,
        ),
        vision=VisionConfig(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=1024,
            patch_size=16,
        ),
    ).validated("demo config")


GROW_VISION_LAYERS = 2  # blocks `grow` adds before stage 5 (docs/demo-model.md)
GROW_TEXT_LAYERS = 1


def deeper(config: PixtralConfig, vision_layers: int, text_layers: int) -> PixtralConfig:
    """`config` with `vision_layers` more vision blocks and `text_layers` more decoder blocks."""
    if vision_layers < 0 or text_layers < 0:
        raise ValueError("layers can only be added (vision_layers and text_layers must be >= 0)")
    return replace(
        config,
        text=replace(config.text, n_layers=config.text.n_layers + text_layers),
        vision=replace(config.vision, num_hidden_layers=config.vision.num_hidden_layers + vision_layers),
    ).validated("deeper demo config")


def bundled_config() -> PixtralConfig:
    """The bundled model's shapes: the demo config, grown for stage 5 (about 1.9 M parameters)."""
    return deeper(demo_config(), GROW_VISION_LAYERS, GROW_TEXT_LAYERS)


def write_init(out: str | Path, n_words: int = N_WORDS, seed: int = 0, std: float = 0.02) -> Path:
    """A native checkpoint of random weights in the demo shape, with the small tokenizer beside it."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty")
    model = init_random_weights_(Pixtral(demo_config(n_words)), seed=seed, std=std)
    save_model(model, out, "native")
    write_small_tokenizer(out, n_words)
    return out


def export_training_checkpoint(checkpoint: str | Path, init: str | Path, out: str | Path) -> Path:
    """A `pixtral train` checkpoint folder (torch.distributed.checkpoint) -> a native model folder (float32,
    params.json and the tokenizer from `init`): to use a run's intermediate weights, e.g. a run stopped early."""
    init, out = Path(init), Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(str(checkpoint), f"{tmp}/state.pt")
        state = torch.load(f"{tmp}/state.pt", weights_only=False)["model"]
    model = {k.removeprefix("model."): v.float() for k, v in state.items()}
    config = demo_config_from(init)
    write_checkpoint(out, "native", config, iter(model.items()))
    copy_tokenizer_files(init, out)
    return out


def grow_model(src: str | Path, out: str | Path, vision_layers: int = 0, text_layers: int = 0) -> Path:
    """Deepen a trained model without changing what it computes: append `vision_layers` blocks to the vision
    encoder and `text_layers` to the decoder, each a copy of the last block with its output projections
    (attention `wo`, feed-forward `w2`) set to zero, so every new block starts as the identity on the residual
    stream (block expansion, as in LLaMA Pro) and training then makes use of it."""
    src, out = Path(src), Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty")
    ckpt = open_checkpoint(src)
    config = ckpt.config
    grown = deeper(config, vision_layers, text_layers)
    state = dict(ckpt.tensors())
    zeroed = ("attention.wo.weight", "feed_forward.w2.weight")
    for prefix, have, add in (
        ("vision_encoder.transformer.layers.", config.vision.num_hidden_layers, vision_layers),
        ("layers.", config.text.n_layers, text_layers),
    ):
        last = f"{prefix}{have - 1}."
        block = {k.removeprefix(last): v for k, v in state.items() if k.startswith(last)}
        for i in range(have, have + add):
            for name, t in block.items():
                state[f"{prefix}{i}.{name}"] = torch.zeros_like(t) if name in zeroed else t.clone()
    write_checkpoint(out, "native", grown, iter(sorted(state.items())))
    copy_tokenizer_files(ckpt.folder, out)
    return out


def mix_jsonl(out: str | Path, sources: list[str | Path], seed: int = 0) -> int:
    """Concatenate `pixtral synth` JSONL files into one shuffled training file next to them: relative image
    paths are rewritten relative to ``out``'s folder. Returns the number of conversations."""
    out = Path(out)
    rows = []
    for source in map(Path, sources):
        prefix = Path(os.path.relpath(source.parent, out.parent))
        with source.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{source}:{number}: not valid JSON ({e.msg})") from e
                for message in row["messages"]:
                    for part in message["content"] if isinstance(message["content"], list) else []:
                        url = (
                            part.get("image_url", {}).get("url") if part.get("type") == "image_url" else None
                        )
                        if url and "://" not in url and not url.startswith(("/", "data:")):
                            part["image_url"]["url"] = (prefix / url).as_posix()
                rows.append(row)
    random.Random(seed).shuffle(rows)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tmp.replace(out)
    return len(rows)


def demo_config_from(folder: str | Path) -> PixtralConfig:
    return PixtralConfig.from_params_json(json.loads((Path(folder) / "params.json").read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pixtral.demo.recipe", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("init", help="write the random initial checkpoint (params.json, weights, tekken.json)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n-words", type=int, default=N_WORDS)
    p.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("export", help="a training checkpoint folder -> a native model folder")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("--init", required=True, type=Path, help="the run's initial model folder")
    e.add_argument("--out", required=True, type=Path)
    g = sub.add_parser("grow", help="add identity-initialised blocks to a trained model (same outputs)")
    g.add_argument("model", type=Path, help="a native model folder")
    g.add_argument("--out", required=True, type=Path)
    g.add_argument("--vision-layers", type=int, default=0, help="blocks to add to the vision encoder")
    g.add_argument("--text-layers", type=int, default=0, help="blocks to add to the decoder")
    m = sub.add_parser("mix", help="shuffle several synth JSONL files into one training file")
    m.add_argument("sources", nargs="+", type=Path, help="JSONL files written by pixtral synth")
    m.add_argument("--out", required=True, type=Path)
    m.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.cmd == "mix":
        print(f"{args.out}: {mix_jsonl(args.out, args.sources, args.seed)} conversations")
    if args.cmd == "grow":
        path = grow_model(args.model, args.out, args.vision_layers, args.text_layers)
        n = demo_config_from(path).num_parameters()
        print(f"{path}: {n['total']:,} parameters ({n})")
    if args.cmd == "export":
        print(export_training_checkpoint(args.checkpoint, args.init, args.out))
    if args.cmd == "init":
        path = write_init(args.out, args.n_words, args.seed)
        n = demo_config(args.n_words).num_parameters()
        print(f"{path}: {n['total']:,} parameters ({n})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
