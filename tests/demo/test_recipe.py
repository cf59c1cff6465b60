"""The demo recipe's data mixing: conversations of several `pixtral synth` folders in one shuffled training
file whose image paths still resolve (what `pixtral train` reads), the same order for the same seed."""

import json

import pytest
import torch

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


def test_recipe_stages_chain_and_the_script_runs_each_one():
    """examples/demo-model/stage*.toml are valid `pixtral train` configs, each starting from the one before it
    (stage 5 from the grown model), and scripts/train_demo_model.sh runs them in order and makes their data."""
    import re
    from pathlib import Path

    from pixtral.train.config import make_config

    root = Path(__file__).resolve().parents[2]
    files = sorted((root / "examples" / "demo-model").glob("stage*.toml"))
    script = (root / "scripts" / "train_demo_model.sh").read_text()
    loop = re.search(r"for stage in ([^;]+); do", script).group(1).split()
    assert loop == [f.stem for f in files]
    previous = "init"
    for number, file in enumerate(files, start=1):
        cfg = make_config(file)  # valid; its paths are relative to the run folder (the file's)
        out_dir, model, data = (
            Path(p).relative_to(file.parent).as_posix() if Path(p).is_absolute() else p
            for p in (cfg.out_dir, cfg.model, cfg.data)
        )
        assert out_dir == f"stage{number}", file.name
        assert model == ("grown" if number == 5 else previous), file.name
        assert data.split("/")[0] in script, f"{file.name}: nothing in the script writes {data}"
        previous = f"{out_dir}/final"
    assert f"serve --model {previous}" in script  # the script measures the last stage


def test_export_training_checkpoint_gives_the_model_the_run_exports(tmp_path):
    """`recipe export` of a run's last checkpoint holds the same tensors as the run's own final export, with the
    config and tokenizer of the model the run started from."""
    from safetensors.torch import load_file

    from pixtral.demo.recipe import export_training_checkpoint, write_init
    from pixtral.train.checkpointing import latest_checkpoint
    from pixtral.train.config import make_config
    from pixtral.train.loop import train

    init = write_init(tmp_path / "init", n_words=300)
    data = write_jsonl(tmp_path / "data", generate("train", 4, max_side=128, tasks=["big_shape_colour"]))
    cfg = make_config(overrides={"model": str(init), "data": str(data), "out_dir": str(tmp_path / "run"),
                                 "max_steps": 2, "save_every": 1, "seq_len": 512, "batch_size": 2,
                                 "micro_batch_size": 2, "lr": 1e-2, "warmup_steps": 0, "progress": False,
                                 "export_dtype": "float32"})  # fmt: skip
    train(cfg)
    final = tmp_path / "run" / "final"
    out = export_training_checkpoint(latest_checkpoint(tmp_path / "run"), init, tmp_path / "exported")
    ours, theirs = (
        load_file(str(out / "consolidated.safetensors")),
        load_file(str(final / "consolidated.safetensors")),
    )
    assert ours.keys() == theirs.keys()
    for name, t in theirs.items():
        assert torch.equal(ours[name], t), name
    assert not torch.equal(
        theirs["output.weight"], load_file(str(init / "consolidated.safetensors"))["output.weight"]
    )
    assert json.loads((out / "params.json").read_text()) == json.loads((init / "params.json").read_text())
    assert (out / "tekken.json").read_bytes() == (init / "tekken.json").read_bytes()
