"""The demo recipe's data mixing: conversations of several `pixtral synth` folders in one shuffled training
file whose image paths still resolve (what `pixtral train` reads), the same order for the same seed."""

import json

import pytest

from pixtral.demo.recipe import mix_jsonl
from pixtral.synthetic import generate, write_jsonl
from pixtral.train.data import read_records


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _urls(row):
    return [p["image_url"]["url"] for m in row["messages"] if isinstance(m["content"], list)
            for p in m["content"] if p["type"] == "image_url"]  # fmt: skip


def test_mix_keeps_every_conversation_and_its_images(tmp_path):
    a = write_jsonl(tmp_path / "a", generate("train", 6, max_side=128, tasks=["big_shape_colour"]))
    b = write_jsonl(tmp_path / "data" / "b", generate("train", 4, max_side=128, tasks=["compare_count"]))
    out = tmp_path / "mix" / "mixed.jsonl"
    out.parent.mkdir()
    assert mix_jsonl(out, [a, b], seed=0) == 10

    mixed = _rows(out)
    ids = sorted(r["id"] for r in mixed)
    assert ids == sorted(r["id"] for r in _rows(a) + _rows(b))
    assert [r["id"] for r in mixed] != [r["id"] for r in _rows(a) + _rows(b)]  # shuffled
    for row in mixed:
        for url in _urls(row):
            assert url.startswith(("../a/images/", "../data/b/images/"))
            assert (out.parent / url).is_file()
    # pixtral train's reader resolves them against the file's folder
    record = read_records(out)[0]
    assert record.base_dir == out.parent

    again = tmp_path / "mix" / "again.jsonl"
    mix_jsonl(again, [a, b], seed=0)
    assert again.read_text() == out.read_text()
    mix_jsonl(again, [a, b], seed=1)
    assert again.read_text() != out.read_text()


def test_mix_names_the_bad_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        mix_jsonl(tmp_path / "out.jsonl", [bad])
