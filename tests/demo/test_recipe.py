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


def test_grow_adds_blocks_that_start_as_the_identity(tmp_path):
    import torch

    from pixtral.checkpoint.loader import load_model
    from pixtral.demo.recipe import grow_model, write_init

    src = write_init(tmp_path / "src", n_words=300, seed=3, std=0.05)
    out = grow_model(src, tmp_path / "grown", vision_layers=2, text_layers=1)
    small, _ = load_model(src)
    grown, _ = load_model(out)
    assert grown.config.vision.num_hidden_layers == small.config.vision.num_hidden_layers + 2
    assert grown.config.text.n_layers == small.config.text.n_layers + 1
    assert (out / "tekken.json").read_bytes() == (src / "tekken.json").read_bytes()
    old = sum(p.numel() for p in small.parameters())
    block_v = sum(p.numel() for p in small.vision_encoder.transformer.layers[-1].parameters())
    block_t = sum(p.numel() for p in small.layers[-1].parameters())
    assert sum(p.numel() for p in grown.parameters()) == old + 2 * block_v + block_t

    torch.manual_seed(0)
    images = [torch.randn(3, 48, 80), torch.randn(3, 32, 16)]
    n_patches = 3 * 5 + 2 * 1
    ids = torch.randint(1000, 1300, (1, n_patches + 12))
    ids[0, 4 : 4 + n_patches] = small.config.vision.image_token_id
    with torch.no_grad():
        before, after = small(ids, images), grown(ids, images)
    assert before.abs().max() > 0.1
    assert torch.equal(before, after)  # the new blocks add exactly zero to the residual stream

    # and they can learn: the zeroed output projections get gradients at once
    grown.train()
    grown(ids, images).logsumexp(-1).sum().backward()
    for block in (grown.layers[-1], grown.vision_encoder.transformer.layers[-1]):
        assert block.attention.wo.weight.grad.abs().max() > 0
        assert block.feed_forward.w2.weight.grad.abs().max() > 0


def test_grow_refuses_a_used_folder_and_removing_layers(tmp_path):
    from pixtral.demo.recipe import grow_model, write_init

    src = write_init(tmp_path / "src", n_words=300)
    with pytest.raises(FileExistsError, match="src"):
        grow_model(src, src, vision_layers=1)
    with pytest.raises(ValueError, match="only be added"):
        grow_model(src, tmp_path / "out", text_layers=-1)
