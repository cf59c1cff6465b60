"""Shared by the training tests: images on disk, conversations, small configs."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from pixtral.train.config import TrainConfig, make_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "train"
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 220), "yellow": (240, 210, 20)}


def write_image(folder: Path, name: str, size: tuple[int, int], colour=(200, 50, 50)) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(folder / f"{name}.png")
    return f"images/{name}.png"


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def colour_dataset(folder: Path, n: int = 4, size: int = 32) -> Path:
    """n one-image questions whose answer is the image's colour (relative image paths)."""
    rows = []
    for name, rgb in list(COLOURS.items())[:n]:
        url = write_image(folder / "images", name, (size, size), rgb)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": [image(url), {"type": "text", "text": "What colour is it?"}]},
                    {"role": "assistant", "content": name.capitalize() + "."},
                ]
            }
        )
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def small_config(folder: Path, data: Path, **overrides) -> TrainConfig:
    """preset:tiny (the real tokenizer's vocabulary), fp32, 1 thread, no progress bar."""
    values = {
        "model": "preset:tiny",
        "data": str(data),
        "out_dir": str(folder / "run"),
        "seq_len": 64,
        "batch_size": 4,
        "micro_batch_size": 2,
        "max_steps": 4,
        "lr": 3e-3,
        "warmup_steps": 1,
        "precision": "fp32",
        "device": "cpu",
        "threads": 1,
        "progress": False,
        "tensorboard": False,
    }
    values.update(overrides)
    return make_config(None, values)
