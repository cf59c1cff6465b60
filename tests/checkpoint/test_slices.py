"""Reading blocks of a stored tensor (checkpoint/source.py): rows and columns of the native layout, from
both formats (the HF q/k permutation reorders rows within heads: any row range, aligned or not, must equal
the same rows of the permuted whole), sharded files and FP8 weights; and the loader's per-tensor hook."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pixtral.checkpoint import source as source_module
from pixtral.checkpoint.formats import write_checkpoint
from pixtral.checkpoint.loader import LoadPlan, load_model, open_checkpoint, save_model
from tests.factories import random_model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("slices")
    model = random_model(seed=5)
    save_model(model, root / "native", "native")
    ckpt = open_checkpoint(root / "native")
    write_checkpoint(root / "hf", "hf", ckpt.config, ckpt.tensors(), max_shard_bytes=60_000)  # sharded
    return root


BLOCKS = [((0, 128), None), ((16, 48), None), ((5, 37), None), (None, (8, 40)), ((3, 70), (17, 64))]


@pytest.mark.parametrize("fmt", ["native", "hf"])
@pytest.mark.parametrize(
    "name", ["layers.0.attention.wq.weight", "layers.1.attention.wk.weight", "output.weight"]
)
def test_a_block_is_the_same_block_of_the_whole_tensor(folders, fmt, name, monkeypatch):
    monkeypatch.setattr(source_module, "_CHUNK_BYTES", 300)  # column blocks in many chunks of rows
    src = open_checkpoint(folders / fmt).sources[name]
    whole = src.read()
    n = whole.shape[0]
    for rows, cols in BLOCKS:
        rows = (min(rows[0], n), min(rows[1], n)) if rows else None
        want = whole[slice(*rows) if rows else slice(None), slice(*cols) if cols else slice(None)]
        assert torch.equal(src.read(rows, cols), want), (rows, cols)
        block = src.slice(rows, cols)
        assert block.shape == tuple(want.shape) and torch.equal(block.read(), want)
        assert torch.equal(block.read_rows(1, 3), want[1:3])
    assert torch.equal(src.read_rows(2, 9), whole[2:9])


def test_hf_and_native_blocks_agree(folders):
    native = open_checkpoint(folders / "native").sources
    hf = open_checkpoint(folders / "hf").sources
    for name in (
        "layers.0.attention.wq.weight",
        "layers.0.attention.wk.weight",
        "layers.0.feed_forward.w2.weight",
    ):
        assert torch.equal(native[name].read((16, 32), (0, 48)), hf[name].read((16, 32), (0, 48)))


def test_a_plan_can_skip_and_replace(folders):
    class Plan(LoadPlan):
        def tensor(self, name, source, module):
            if name.startswith("vision_encoder."):
                return LoadPlan.SKIP
            if name == "layers.0.feed_forward.w2.weight":
                return nn.Identity()
            return super().tensor(name, source, module)

    model, _ = load_model(folders / "native", plan=Plan())
    assert isinstance(model.layers[0].feed_forward.w2, nn.Identity)
    assert model.vision_encoder.ln_pre.weight.is_meta and not model.norm.weight.is_meta
