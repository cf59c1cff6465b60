"""Random checkpoints written by hand, streaming: the safetensors bytes are valid (our reader, the
`safetensors` library, the loader's shape check), the fill is N(0, std) and not degenerate, and the 12B
header adds up to the 12B parameter count without writing anything."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open

from pixtral.checkpoint.loader import expected_shapes, load_model, open_checkpoint
from pixtral.checkpoint.safetensors_file import SafetensorsFile
from pixtral.checkpoint.streaming_init import safetensors_header, write_random_checkpoint_streaming
from pixtral.config import preset
from pixtral.default_model import UNTRAINED_MARKER
from tests.factories import TEST_CONFIG


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream") / "m"
    write_random_checkpoint_streaming(folder, TEST_CONFIG, torch.bfloat16, seed=7)
    return folder


def test_file_layout_is_safetensors(written):
    raw = (written / "consolidated.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0
    header = json.loads(raw[8 : 8 + n])
    assert header.pop("__metadata__") == {"format": "pt"}
    ends = 0
    for entry in header.values():  # contiguous, in order, sized by dtype x shape
        start, end = entry["data_offsets"]
        assert start == ends and end - start == 2 * torch.Size(entry["shape"]).numel()
        ends = end
    assert len(raw) == 8 + n + ends
    assert list(header) == list(expected_shapes(TEST_CONFIG))


def test_reads_back_with_our_reader_and_the_safetensors_library(written):
    ours = SafetensorsFile(written / "consolidated.safetensors")
    with safe_open(str(written / "consolidated.safetensors"), "pt") as f:
        assert set(f.keys()) == set(ours.tensors)
        for name in f.keys():
            assert torch.equal(f.get_tensor(name), ours.read(name))
    ckpt = open_checkpoint(written)  # names and shapes checked against params.json
    assert ckpt.config == TEST_CONFIG and ckpt.stored_dtype == torch.bfloat16
    assert (written / UNTRAINED_MARKER).is_file()


def test_values_are_random_normal_with_norms_at_one(written):
    model, _ = load_model(written, "float32")
    w = model.layers[0].feed_forward.w1.weight
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    assert not torch.equal(w[0], w[1])  # rows differ
    assert not torch.equal(model.layers[0].attention.wq.weight, model.layers[1].attention.wq.weight)
    assert torch.equal(model.norm.weight, torch.ones_like(model.norm.weight))
    assert torch.equal(
        model.vision_encoder.ln_pre.weight, torch.ones_like(model.vision_encoder.ln_pre.weight)
    )
    with torch.inference_mode():
        logits = model(torch.tensor([[1, 150, 160]]))
    assert torch.isfinite(logits).all()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, written):
    write_random_checkpoint_streaming(tmp_path / "a", TEST_CONFIG, torch.bfloat16, seed=7)
    write_random_checkpoint_streaming(tmp_path / "b", TEST_CONFIG, torch.bfloat16, seed=8)
    same = (written / "consolidated.safetensors").read_bytes()
    assert (tmp_path / "a" / "consolidated.safetensors").read_bytes() == same
    assert (tmp_path / "b" / "consolidated.safetensors").read_bytes() != same


def test_hf_format_holds_the_same_random_values(tmp_path, written):
    write_random_checkpoint_streaming(tmp_path / "hf", TEST_CONFIG, torch.bfloat16, seed=7, fmt="hf")
    a, _ = load_model(written)
    b, ckpt = load_model(tmp_path / "hf")
    assert ckpt.format == "hf"
    assert torch.equal(a.output.weight, b.output.weight)


def test_refuses_a_non_empty_folder_and_bad_arguments(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("")
    with pytest.raises(FileExistsError):
        write_random_checkpoint_streaming(tmp_path / "x", TEST_CONFIG)
    with pytest.raises(ValueError, match="dtype"):
        write_random_checkpoint_streaming(tmp_path / "y", TEST_CONFIG, torch.int8)
    assert not (tmp_path / "y").exists()


def test_12b_header_adds_up_to_the_parameter_count():
    config = preset("12b")
    shapes = expected_shapes(config)
    head = safetensors_header([(n, s, torch.bfloat16) for n, s in shapes.items()])
    (n,) = struct.unpack("<Q", head[:8])
    header = json.loads(head[8:])
    header.pop("__metadata__")
    assert len(header) == 585  # architecture.md §6.1
    assert header["layers.39.feed_forward.w1.weight"]["shape"] == [14336, 5120]
    assert (
        header["output.weight"]["data_offsets"][1] - header["output.weight"]["data_offsets"][0]
        == 131072 * 5120 * 2
    )
    total = max(e["data_offsets"][1] for e in header.values())
    assert total == 2 * config.num_parameters()["total"]
    assert 12.6e9 < config.num_parameters()["total"] < 12.8e9
