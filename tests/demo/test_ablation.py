"""The ablation's driver: both arms go through every curriculum stage from the same initial weights (the
baseline keeps its position table from stage to stage), and its measurements agree with the training loss."""

import json

import pytest
import torch

from pixtral.demo import ablation
from pixtral.demo.fixed_resolution import POS_NAME


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    """A two-stage curriculum on a few conversations of each data set, two optimizer steps a stage."""
    monkeypatch.setattr(ablation, "DATA", {
        "colour": ("train", 4, ["big_shape_colour"]),
        "warmup": ("train", 3, ablation.WARMUP),
        "coarse": ("train", 4, ablation.COARSE),
        "fine": ("train", 5, ablation.FINE),
        "test-fine": ("test", 5, ablation.FINE),
        "test-coarse": ("test", 4, ablation.COARSE),
        "test-warmup": ("test", 3, ablation.WARMUP),
    })  # fmt: skip
    monkeypatch.setattr(ablation, "STAGES", (ablation.Stage("stage1", "colour", 2),
                                             ablation.Stage("stage2", "mixed", 2)))  # fmt: skip
    monkeypatch.setattr(ablation, "TRAIN_FIELDS", dict(ablation.TRAIN_FIELDS, seq_len=512, save_every=0))
    ablation.prepare(tmp_path)
    return tmp_path


def _state(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "consolidated.safetensors"))


def test_both_arms_train_through_every_stage(tiny_run, monkeypatch):
    from safetensors.torch import save_file

    import pixtral.train.loop as loop

    stock = loop.build_model
    stages = ablation.STAGES
    # stage 1 alone first, then mark the baseline's exported table so that stage 2's start is recognisable
    monkeypatch.setattr(ablation, "STAGES", stages[:1])
    stage1 = ablation.train_arm(tiny_run, "fixed")
    state = _state(stage1)
    state[POS_NAME] = state[POS_NAME] + 5.0
    save_file(state, str(stage1 / "consolidated.safetensors"))
    monkeypatch.setattr(ablation, "STAGES", stages)
    for arm in ablation.ARMS:
        final = ablation.train_arm(tiny_run, arm)
        assert final == tiny_run / f"train-{arm}" / "stage2" / "final"
        assert loop.build_model is stock  # the baseline's loader is not left behind for the next run
    # the same rows in the same order for both arms, only the images differ
    rows = {arm: (tiny_run / arm / "mixed.jsonl").read_text().splitlines() for arm in ablation.ARMS}
    assert [json.loads(r)["id"] for r in rows["native"]] == [json.loads(r)["id"] for r in rows["fixed"]]
    assert len(rows["native"]) == 4 + 3 + 5
    # the baseline's position table goes from stage to stage (and trains on); the native arm has none
    stage2 = tiny_run / "train-fixed" / "stage2" / "final"
    assert ablation.has_position_table(stage2)
    assert not ablation.has_position_table(tiny_run / "train-native" / "stage2" / "final")
    t1, t2 = state[POS_NAME], _state(stage2)[POS_NAME]
    assert not torch.equal(t2, t1)
    assert (t2 - t1).abs().max() < 0.05  # stage 2 started from stage 1's (marked) table

    # evaluation and the report: every test item of each arm, the table has a row per task and group
    for arm in ablation.ARMS:
        res = ablation.evaluate_arm(tiny_run, arm)
        assert len(res["items"]) == 5 + 4 + 3
        assert all(it["nll"] > 0 and it["nll_blank"] > 0 for it in res["items"])
        (tiny_run / f"eval-{arm}.json").write_text(json.dumps(res))
    table = ablation.report(tiny_run, None)
    for key in [*ablation.FINE, *ablation.COARSE, *ablation.WARMUP, "**fine**", "**coarse**", "**warm-up**"]:
        assert f"| {key} |" in table
    for group, n in (("fine", 5), ("coarse", 4), ("warm-up", 3)):  # the paired (a) - (b) differences
        assert f"| {group} (n = {n}) |" in table


def test_answer_nll_is_the_training_loss(tmp_path):
    """The evaluation's teacher-forced NLL equals the loss `pixtral train` optimizes, per answer token."""
    from pixtral.checkpoint.loader import load_model
    from pixtral.demo.recipe import write_init
    from pixtral.prompt.tokenizer import load_tokenizer
    from pixtral.synthetic import generate, write_jsonl
    from pixtral.train.data import load_dataset
    from pixtral.train.loop import LossModule
    from pixtral.train.packing import IGNORE

    data = write_jsonl(
        tmp_path / "d", generate("test", 2, max_side=128, tasks=["followup_shapes", "doc_word"])
    )
    write_init(tmp_path / "init")
    model, _ = load_model(tmp_path / "init", "float32")
    tok = load_tokenizer(tmp_path / "init")
    dataset = load_dataset(str(data), tok, 1024, "truncate", name="d")
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    for index, row in enumerate(rows):
        sample = dataset.samples[index]
        ids = torch.tensor(sample.token_ids)
        labels = [sample.token_ids[t + 1] if sample.loss_mask[t + 1] else IGNORE for t in range(len(ids) - 1)]
        labels = torch.tensor(labels + [IGNORE])
        images = [torch.from_numpy(im) for im in dataset.images(index)]
        with torch.no_grad():
            total = LossModule(model)(ids[None], labels[None], images)
        expected = total.item() / (labels != IGNORE).sum().item()
        got = ablation.answer_nll(model, tok, row, data.parent)
        assert got == pytest.approx(expected, rel=1e-5)
    # a white image of the same size changes the answer's likelihood (the image is read at all)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    white = ablation.blanked(rows[0], data.parent, scratch)
    assert ablation.answer_nll(model, tok, white, data.parent) != pytest.approx(
        ablation.answer_nll(model, tok, rows[0], data.parent), abs=1e-7
    )
