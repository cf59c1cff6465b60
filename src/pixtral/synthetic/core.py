"""Samples, seeds and the split rule.

A sample is a pure function of (split, seed, index): its random stream is seeded with
sha256("pixtral.synthetic|split|seed|index"), so each split draws from its own stream and any sample can be
regenerated alone. Splits also cannot share an image: every image size (width, height) belongs to exactly
one split (by a hash of the size, 90% of sizes train, 5% validation, 5% test) and the first image of a sample
always has a size its split owns. Identical images have identical sizes, so no (question, answer, images)
triple can appear in two splits, whatever the seeds and counts.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from pixtral.synthetic.draw import image_hash

SPLITS = ("train", "validation", "test")
_SPLIT_SHARE = {"test": 5, "validation": 5}  # percent of image sizes owned; train owns the rest

MAX_SIDE = 1024  # mistral-common's max_image_size for Pixtral
MIN_MAX_SIDE = 128  # the smallest --max-side every task can draw into (charts need 112 px)


@dataclass
class Sample:
    """One conversation whose last user turn needs the image(s) to answer.

    ``messages`` is OpenAI-shaped and ends with the user turn to answer (earlier turns, with their assistant
    answers, are the context of a follow-up); image parts are ``{"type": "image", "image": PIL.Image}`` in
    ``images`` order. ``answer`` is the exact expected reply. ``meta`` holds the drawing's ground truth
    (values, boxes, shapes) for tests and analysis.
    """

    id: str
    split: str
    task: str
    granularity: str  # "fine" (small text, dense charts, tables), "coarse" (shapes, colours) or "warmup"
    messages: list[dict[str, Any]]
    answer: str
    images: list[Image.Image]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def question(self) -> str:
        """The text of the last user turn."""
        content = self.messages[-1]["content"]
        return " ".join(p["text"] for p in content if p.get("type") == "text")

    def conversation(self) -> list[dict[str, Any]]:
        """``messages`` plus the final assistant answer: a training example."""
        return [*self.messages, {"role": "assistant", "content": self.answer}]

    def content_key(self) -> tuple[str, str, tuple[str, ...]]:
        """(question, answer, image pixel hashes): what must never repeat across splits."""
        return self.question, self.answer, tuple(image_hash(im) for im in self.images)

    def __getitem__(self, key: str) -> Any:  # sample["answer"] works like the dict it describes
        return getattr(self, key)


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    return split


def sample_rng(split: str, seed: int, index: int, salt: str = "") -> random.Random:
    digest = hashlib.sha256(f"pixtral.synthetic|{split}|{seed}|{index}|{salt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def size_owner(width: int, height: int) -> str:
    """The split that owns images of this size."""
    bucket = int.from_bytes(hashlib.sha256(f"size|{width}|{height}".encode()).digest()[:4], "big") % 100
    edge = 0
    for split, share in _SPLIT_SHARE.items():
        edge += share
        if bucket < edge:
            return split
    return "train"


def pick_size(
    rng: random.Random,
    split: str,
    max_side: int,
    min_w: int,
    min_h: int,
    *,
    max_aspect: float = 4.0,
    owned: bool = True,
) -> tuple[int, int]:
    """A (width, height) with sides in [min, max_side], long side log-uniform, aspect up to ``max_aspect``
    either way (a third square-ish, a third wide, a third tall), owned by ``split`` when ``owned``."""
    lo = max(min_w, min_h)
    hi = max(max_side, lo)
    for _ in range(10_000):
        long_side = round(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        shape = rng.random()
        if shape < 1 / 3:
            aspect = math.exp(rng.uniform(0, math.log(1.3)))
        else:
            aspect = math.exp(rng.uniform(math.log(1.3), math.log(max_aspect)))
        short_side = max(1, round(long_side / aspect))
        wide = shape >= 2 / 3 or (shape < 1 / 3 and rng.random() < 0.5)
        w, h = (long_side, short_side) if wide else (short_side, long_side)
        w, h = min(max(w, min_w), hi), min(max(h, min_h), hi)
        if not owned or size_owner(w, h) == split:
            return w, h
    raise RuntimeError(f"no image size owned by {split!r} in [{min_w}..{hi}]x[{min_h}..{hi}]")


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


def image_part(image: Image.Image) -> dict[str, Any]:
    return {"type": "image", "image": image}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}
