"""JSONL + PNG folders (training format), parquet (evaluation harness), and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixtral.evals.data import load_local
from pixtral.evals.prompts import load_prompt_set
from pixtral.evals.tasks.synthetic import SyntheticTask, exact_match
from pixtral.evals.tasks.vqav2 import VQAv2
from pixtral.synthetic import generate, write_jsonl, write_parquet
from pixtral.synthetic.cli import main as synth_main


@pytest.fixture(scope="module")
def small_set():
    return list(generate("test", 22, seed=0, max_side=128))


def test_jsonl_rows_are_whole_conversations_with_relative_pngs(tmp_path: Path, small_set):
    path = write_jsonl(tmp_path, iter(small_set))
    assert path == tmp_path / "test.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == len(small_set)
    for row, s in zip(rows, small_set, strict=True):
        assert row["id"] == s.id and row["task"] == s.task and row["answer"] == s.answer
        assert row["messages"][-1] == {"role": "assistant", "content": s.answer}
        urls = [p["image_url"]["url"] for m in row["messages"] if isinstance(m["content"], list)
                for p in m["content"] if p["type"] == "image_url"]  # fmt: skip
        assert len(urls) == len(s.images)
        for url, im in zip(urls, s.images, strict=True):
            assert not Path(url).is_absolute() and url.startswith("images/")
            back = Image.open(path.parent / url)
            assert back.size == im.size and back.convert("RGB").tobytes() == im.tobytes()
    # the same samples write byte-identical files
    again = write_jsonl(tmp_path / "again", small_set)
    assert again.read_bytes() == path.read_bytes()
    for png in (tmp_path / "images").iterdir():
        assert (tmp_path / "again" / "images" / png.name).read_bytes() == png.read_bytes()


def test_jsonl_conversations_encode_with_mistral_common(tmp_path: Path, small_set):
    """Every prompt (multi-image and multi-turn included) goes through the project's encoder."""
    from pixtral.prompt.chat import encode_chat
    from pixtral.prompt.tokenizer import packaged_tokenizer

    tokenizer = packaged_tokenizer()
    path = write_jsonl(tmp_path, small_set)
    for line in path.read_text().splitlines():
        row = json.loads(line)
        prompt = row["messages"][:-1]
        for m in prompt:
            if isinstance(m["content"], list):
                for p in m["content"]:
                    if p["type"] == "image_url":
                        p["image_url"]["url"] = str(tmp_path / p["image_url"]["url"])
        encoded = encode_chat(prompt, tokenizer)
        assert len(encoded.images) == sum(1 for m in prompt if isinstance(m["content"], list)
                                          for p in m["content"] if p["type"] == "image_url")  # fmt: skip


def test_parquet_reads_back_through_the_harness(tmp_path: Path, small_set):
    write_parquet(tmp_path / "test.parquet", small_set)
    rows = load_local(tmp_path, "test")
    assert len(rows) == len(small_set)
    prompts = load_prompt_set("explicit")
    task = SyntheticTask()
    for i, s in enumerate(small_set):
        row = rows[i]
        assert row["answers"] == [s.answer] and row["answer_type"] == s.task and row["question"] == s.question
        (item,) = task.build_items(i, row, prompts, "fixed", "test")
        assert item.meta["task"] == s.task and item.meta["granularity"] == s.granularity
        assert [m["role"] for m in item.messages] == [m["role"] for m in s.messages]
        sent = [p["image"] for m in item.messages if isinstance(m["content"], list) for p in m["content"]
                if p["type"] == "image"]  # fmt: skip
        assert len(sent) == len(s.images)
        for data, im in zip(sent, s.images, strict=True):
            back = Image.open(__import__("io").BytesIO(data.data))
            assert np.array_equal(np.asarray(back.convert("RGB")), np.asarray(im))
        assert item.messages[-1]["content"][-1]["text"] == s.question  # no template: the question as trained
        assert task.score(s.answer, item.reference, "fixed").metrics["exact_match"] == 1.0
        assert task.score(f" {s.answer.upper()}.", item.reference, "fixed").metrics["exact_match"] == 1.0
        assert task.score(s.answer + "0", item.reference, "fixed").metrics["exact_match"] == 0.0
        if len(s.images) == 1 and len(s.messages) == 1:  # the built-in VQAv2 task reads the same rows
            (v,) = VQAv2().build_items(i, row, prompts, "fixed", "test")
            assert v.meta["answer_type"] == s.task and v.reference == [s.answer]
            assert VQAv2().score(s.answer, v.reference, "fixed").metrics["vqa_match"] == 1.0


def test_exact_match_and_registration():
    assert exact_match("Red.", ["red"]) == 1.0 and exact_match('"42"', ["42"]) == 1.0
    assert exact_match("42 apples", ["42"]) == 0.0 and exact_match(None, ["1"]) == 0.0
    from pixtral.evals.tasks import get_task

    assert isinstance(get_task("synthetic"), SyntheticTask)  # listed with the paper's six


def test_cli_writes_both_formats(tmp_path: Path, capsys):
    args = ["--split", "validation", "--n", "11", "--max-side", "128", "--no-progress"]
    assert synth_main(["--out", str(tmp_path / "j"), *args]) == 0
    assert len((tmp_path / "j" / "validation.jsonl").read_text().splitlines()) == 11
    assert synth_main(["--out", str(tmp_path / "p"), *args, "--format", "parquet", "--tasks", "coarse"]) == 0
    rows = load_local(tmp_path / "p", "validation")
    assert len(rows) == 11 and {rows[i]["granularity"] for i in range(11)} == {"coarse"}
    assert synth_main(["--out", str(tmp_path / "x"), "--tasks", "nope", "--no-progress"]) == 2
    assert "unknown synthetic task" in capsys.readouterr().err
    assert synth_main(["--out", str(tmp_path / "x"), "--max-side", "4096", "--no-progress"]) == 2


def test_cli_mounts_on_a_parent_parser():
    import argparse

    from pixtral.synthetic.cli import add_synthetic_parser, handle_synth

    parser = argparse.ArgumentParser(prog="pixtral")
    add_synthetic_parser(parser.add_subparsers())
    args = parser.parse_args(["synth", "--out", "d", "--split", "test", "--n", "5", "--format", "parquet"])
    assert args.handler is handle_synth and args.n == 5 and args.max_side == 1024


def test_cli_refuses_a_non_empty_folder_and_overwrite_leaves_no_orphans(tmp_path: Path, capsys):
    out = tmp_path / "s"
    args = ["--out", str(out), "--max-side", "128", "--no-progress"]
    assert synth_main([*args, "--n", "12"]) == 0
    before = sorted(p.name for p in (out / "images").iterdir())
    assert synth_main([*args, "--n", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and err[0].startswith("error: ") and "not empty" in err[0] and "--overwrite" in err[0]
    )
    assert sorted(p.name for p in (out / "images").iterdir()) == before  # nothing was touched
    (out / "notes.md").write_text("mine")
    assert synth_main([*args, "--n", "3", "--overwrite"]) == 0
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    referenced = {p["image_url"]["url"] for r in rows for m in r["messages"] if isinstance(m["content"], list)
                  for p in m["content"] if p["type"] == "image_url"}  # fmt: skip
    assert len(rows) == 3
    assert {f"images/{p.name}" for p in (out / "images").iterdir()} == referenced  # no orphan images
    assert (out / "notes.md").read_text() == "mine"  # only the data set's own files are removed
