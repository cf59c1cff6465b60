"""Checkpoint formats: bit-exact round trips, sharding, config parsing rules, and one clear error per bad input."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from pixtral.checkpoint.formats import HF_INDEX, NATIVE_PARAMS, NATIVE_WEIGHTS, write_checkpoint
from pixtral.checkpoint.hf_names import half_to_interleaved, interleaved_to_half
from pixtral.checkpoint.loader import convert, load_model, open_checkpoint, save_model
from pixtral.cli import main as cli
from pixtral.config import PixtralConfig
from pixtral.errors import CheckpointError, ConfigError
from tests.factories import TEST_CONFIG, prompt_with_images, random_model


@pytest.fixture(scope="module")
def native_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("native")
    save_model(random_model(seed=2), folder, "native")
    (folder / "tekken.json").write_text("{}")  # tokenizer files travel with conversions
    return folder


def fresh_copy(src, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def tensors_of(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_to_hf_to_native_is_bit_exact(tmp_path, dtype):
    src = tmp_path / "src"
    save_model(random_model(seed=3).to(dtype), src, "native")
    assert cli(["convert", str(src), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert cli(["convert", str(tmp_path / "hf"), str(tmp_path / "back"), "--to", "native"]) == 0
    a, b = tensors_of(src / NATIVE_WEIGHTS), tensors_of(tmp_path / "back" / NATIVE_WEIGHTS)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype == dtype
        assert torch.equal(a[name].view(torch.uint8), b[name].view(torch.uint8)), name
    assert json.loads((src / NATIVE_PARAMS).read_text()) == json.loads(
        (tmp_path / "back" / NATIVE_PARAMS).read_text()
    )
    # and the HF copy really is in HF layout: q rows permuted, names renamed
    hf = tensors_of(tmp_path / "hf" / "model.safetensors")
    wq = a["layers.0.attention.wq.weight"]
    hf_wq = hf["language_model.model.layers.0.self_attn.q_proj.weight"]
    assert not torch.equal(hf_wq, wq)
    assert torch.equal(hf_wq, interleaved_to_half(wq, TEST_CONFIG.text.n_heads, TEST_CONFIG.text.head_dim))


def test_permutation_inverse():
    w = torch.randn(8 * 16, 5)
    assert torch.equal(half_to_interleaved(interleaved_to_half(w, 8, 16), 8, 16), w)


@torch.no_grad()
def test_sharded_hf_checkpoint_loads_like_the_single_file(native_dir, tmp_path):
    ckpt = open_checkpoint(native_dir)
    write_checkpoint(tmp_path / "sharded", "hf", ckpt.config, ckpt.tensors(), max_shard_bytes=100_000)
    index = json.loads((tmp_path / "sharded" / HF_INDEX).read_text())
    assert len(set(index["weight_map"].values())) > 2
    a, _ = load_model(native_dir)
    b, ckpt_b = load_model(tmp_path / "sharded")
    assert ckpt_b.format == "hf"
    ids, images = prompt_with_images([(2, 2)], seed=1)
    assert torch.equal(a(ids, images), b(ids, images))


def test_convert_copies_tokenizer_and_refuses_a_non_empty_destination(native_dir, tmp_path):
    convert(native_dir, tmp_path / "hf", "hf")
    assert (tmp_path / "hf" / "tekken.json").read_text() == "{}"
    with pytest.raises(CheckpointError, match="not empty"):
        convert(native_dir, tmp_path / "hf", "hf")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_load_casts_to_the_requested_dtype(native_dir, dtype):
    model, _ = load_model(native_dir, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
    assert not any(p.is_meta for p in model.parameters())


# ---- config parsing rules ------------------------------------------------------------------------


def test_params_json_rules(native_dir):
    params = json.loads((native_dir / NATIVE_PARAMS).read_text())
    params["some_future_key"] = {"x": 1}  # unknown keys ignored
    params["vision_encoder"]["another_unknown"] = 3
    del params["vision_encoder"]["image_break_token_id"]  # absent -> 12
    params["vision_encoder"]["image_end_token_id"] = -1  # negative -> 13
    cfg = PixtralConfig.from_params_json(params)
    assert cfg.vision.image_break_token_id == 12 and cfg.vision.image_end_token_id == 13
    assert cfg.text.head_dim == 16 != cfg.text.dim // cfg.text.n_heads  # given head_dim is kept


def test_hf_config_rules():
    hf = TEST_CONFIG.to_hf_config()
    assert PixtralConfig.from_hf_config(hf) == TEST_CONFIG
    legacy = json.loads(json.dumps(hf))
    for sub in ("text_config", "vision_config"):
        del legacy[sub]["rope_parameters"]  # hub configs carry rope_theta at the top level
    assert PixtralConfig.from_hf_config(legacy) == TEST_CONFIG
    gelu = json.loads(json.dumps(hf))
    gelu["vision_config"]["hidden_act"] = "gelu"
    with pytest.raises(ConfigError, match="hidden_act"):
        PixtralConfig.from_hf_config(gelu)


def test_12b_preset_matches_the_published_parameter_count():
    from pixtral.config import preset

    counts = preset("12b").num_parameters()
    assert counts == {
        "decoder": 12_247_782_400,
        "vision_encoder": 403_489_792,
        "adapter": 31_467_520,
        "total": 12_682_739_712,
    }  # docs/architecture.md, "Decoder"


# ---- bad input: one clear error naming the file and the tensor or field --------------------------


def edit_params(folder, fn):
    params = json.loads((folder / NATIVE_PARAMS).read_text())
    fn(params)
    (folder / NATIVE_PARAMS).write_text(json.dumps(params))


def rewrite_weights(folder, fn):
    state = tensors_of(folder / NATIVE_WEIGHTS)
    fn(state)
    save_file(state, str(folder / NATIVE_WEIGHTS))


def _truncate(folder):
    path = folder / NATIVE_WEIGHTS
    path.write_bytes(path.read_bytes()[:-1000])


def _corrupt_header(folder):
    path = folder / NATIVE_WEIGHTS
    data = bytearray(path.read_bytes())
    data[8:20] = b"not json!!!!"
    path.write_bytes(bytes(data))


def _huge_header(folder):
    path = folder / NATIVE_WEIGHTS
    path.write_bytes(struct.pack("<Q", 10**12) + path.read_bytes()[8:])


CASES = {
    "missing folder": (lambda f: shutil.rmtree(f), CheckpointError, "no such folder"),
    "missing weights": (
        lambda f: (f / NATIVE_WEIGHTS).unlink(),
        CheckpointError,
        "no consolidated.safetensors",
    ),
    "truncated file": (_truncate, CheckpointError, "tensor '[a-z_.0-9]+': file is truncated"),
    "corrupt header": (_corrupt_header, CheckpointError, "consolidated.safetensors: corrupt header"),
    "header larger than file": (_huge_header, CheckpointError, "corrupt or truncated header"),
    "empty file": (
        lambda f: (f / NATIVE_WEIGHTS).write_bytes(b""),
        CheckpointError,
        "not a safetensors file",
    ),
    "missing tensor": (
        lambda f: rewrite_weights(f, lambda s: s.pop("layers.1.ffn_norm.weight")),
        CheckpointError,
        "missing tensor.*layers.1.ffn_norm.weight",
    ),
    "extra tensor": (
        lambda f: rewrite_weights(f, lambda s: s.update({"layers.9.attention.wq.weight": torch.zeros(1)})),
        CheckpointError,
        "unexpected tensor 'layers.9.attention.wq.weight'",
    ),
    "foreign tensor": (
        lambda f: rewrite_weights(f, lambda s: s.update({"patch_merger.weight": torch.zeros(1)})),
        CheckpointError,
        "unexpected tensor 'patch_merger.weight'",
    ),
    "mis-shaped tensor": (
        lambda f: rewrite_weights(f, lambda s: s.update({"norm.weight": torch.ones(65)})),
        CheckpointError,
        "tensor 'norm.weight' has shape \\[65\\] but the config implies \\[64\\]",
    ),
    "config contradicts tensors": (
        lambda f: edit_params(f, lambda p: p.update(hidden_dim=128)),
        CheckpointError,
        "feed_forward.w1.weight' has shape \\[96, 64\\].*\\[128, 64\\]",
    ),
    "params.json not JSON": (
        lambda f: (f / NATIVE_PARAMS).write_text("{oops"),
        ConfigError,
        "params.json: not valid JSON",
    ),
    "params.json missing field": (
        lambda f: edit_params(f, lambda p: p.pop("n_layers")),
        ConfigError,
        "params.json: missing required field 'n_layers'",
    ),
    "params.json wrong type": (
        lambda f: edit_params(f, lambda p: p.update(dim="64")),
        ConfigError,
        "field 'dim' must be a number",
    ),
    "not a vision model": (
        lambda f: edit_params(f, lambda p: p.pop("vision_encoder")),
        ConfigError,
        "no 'vision_encoder'",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_checkpoints_raise_one_clear_error(native_dir, tmp_path, case):
    damage, error, message = CASES[case]
    folder = fresh_copy(native_dir, tmp_path)
    damage(folder)
    with pytest.raises(error, match=message):
        load_model(folder)


def test_cli_reports_a_bad_checkpoint_in_one_line(native_dir, tmp_path, capsys):
    folder = fresh_copy(native_dir, tmp_path)
    _truncate(folder)
    assert cli(["info", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and NATIVE_WEIGHTS in err
