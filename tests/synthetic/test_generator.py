"""Determinism, shapes of the samples, sizes and the split rule."""

from __future__ import annotations

import io
from collections import Counter

import pytest
from PIL import Image

from pixtral.synthetic import SPLITS, TASKS, generate, make_sample, size_owner
from pixtral.synthetic.export import png_bytes


def _fingerprint(sample):
    return (
        sample.id,
        sample.task,
        [
            m["content"] if isinstance(m["content"], str) else [p.get("text") for p in m["content"]]
            for m in sample.messages
        ],  # fmt: skip
        sample.answer,
        [png_bytes(im) for im in sample.images],
    )


def test_same_seed_gives_byte_identical_samples(samples_256):
    again = list(generate("train", 55, seed=0, max_side=256))
    assert [_fingerprint(s) for s in again] == [_fingerprint(s) for s in samples_256]


def test_one_sample_regenerates_alone(samples_256):
    s = samples_256[37]
    assert _fingerprint(make_sample("train", 37, seed=0, max_side=256)) == _fingerprint(s)


def test_another_seed_or_split_gives_other_samples(samples_256):
    for other in (
        generate("train", 55, seed=1, max_side=256),
        generate("validation", 55, seed=0, max_side=256),
    ):
        other = list(other)
        same = sum(
            _fingerprint(a)[2:] == _fingerprint(b)[2:] for a, b in zip(other, samples_256, strict=True)
        )
        assert same == 0
        assert [s.task for s in other] == [s.task for s in samples_256]  # round-robin by index


def test_every_task_and_both_granularities(samples_256):
    default = [t for t, spec in TASKS.items() if spec.granularity != "warmup"]
    assert Counter(s.task for s in samples_256) == dict.fromkeys(default, 5)
    assert {s.granularity for s in samples_256} == {"fine", "coarse"}
    assert {TASKS[t].granularity for t in ("doc_number", "table_cell", "bar_value", "line_value")} == {"fine"}
    assert {TASKS[t].granularity for t in ("shape_count", "shape_colour", "compare_count")} == {"coarse"}


def test_sample_shape(samples):
    for s in samples:
        assert s.messages[-1]["role"] == "user"
        roles = [m["role"] for m in s.messages]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
        parts = [p for m in s.messages if isinstance(m["content"], list) for p in m["content"]]
        assert [p["image"] for p in parts if p["type"] == "image"] == s.images
        assert "Answer with" in s.question  # the expected format is stated
        assert s.answer and s.answer == s.answer.strip() and len(s.answer.split()) == 1
        assert s.conversation()[-1] == {"role": "assistant", "content": s.answer}
        assert s["answer"] == s.answer and s["id"] == s.id
        if s.task.startswith("followup"):
            assert len(roles) == 3 and len(s.images) == 1
        if s.task == "compare_count":
            assert len(s.images) == 2 and s.answer in ("first", "second")


def test_max_side_is_respected():
    for s in generate("validation", 44, seed=3, max_side=128):
        for im in s.images:
            assert max(im.size) <= 128 and min(im.size) >= 16, (s.task, im.size)
    with pytest.raises(ValueError, match="max_side"):
        make_sample("train", 0, max_side=64)
    with pytest.raises(ValueError, match="unknown synthetic task"):
        make_sample("train", 0, tasks=["nope"])
    with pytest.raises(ValueError, match="unknown split"):
        make_sample("dev", 0)


def test_sizes_and_aspect_ratios_vary(samples_1024):
    sizes = [im.size for s in samples_1024 for im in s.images]
    assert max(max(wh) for wh in sizes) > 512
    assert min(max(wh) for wh in sizes) < 100  # tiny images
    assert any(w >= 2 * h for w, h in sizes) and any(h >= 2 * w for w, h in sizes)  # wide and tall
    assert all(max(wh) <= 1024 for wh in sizes)


def test_png_round_trip_is_lossless(samples_256):
    for s in samples_256[:11]:
        for im in s.images:
            back = Image.open(io.BytesIO(png_bytes(im)))
            assert back.size == im.size and back.convert("RGB").tobytes() == im.tobytes()


def test_splits_do_not_overlap():
    """Identical (question, answer, images) never appears in two splits, even with small images
    (max_side 128, where sizes repeat often), and each sample's first image has a size its split owns."""
    keys: dict[str, set] = {}
    for split in SPLITS:
        samples = list(generate(split, 88, seed=0, max_side=128, tasks=["shape_colour", "shape_count"]))
        samples += list(generate(split, 22, seed=7, max_side=128))
        for s in samples:
            assert size_owner(*s.images[0].size) == split
        keys[split] = {s.content_key() for s in samples}
        assert len({s.id for s in samples}) == len({(s.meta["seed"], s.meta["index"]) for s in samples})
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]


def test_size_ownership_shares():
    owners = Counter(size_owner(w, h) for w in range(16, 216) for h in range(16, 66))
    total = sum(owners.values())
    assert 0.85 < owners["train"] / total < 0.95
    assert 0.03 < owners["test"] / total < 0.07 and 0.03 < owners["validation"] / total < 0.07
