"""FP8 checkpoints (Ministral 3 / Devstral Small 2 releases): e4m3 weights + per-tensor scales, in the native
(qscale_weight / qscale_act) and HF (weight_scale_inv / activation_scale) spellings, dequantized on load to
exactly the reference formula W = W_fp8.float() * scale (and transformers' own dequantization)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from pixtral.checkpoint.formats import HF_CONFIG, HF_WEIGHTS, NATIVE_PARAMS, NATIVE_WEIGHTS
from pixtral.checkpoint.hf_names import interleaved_to_half, native_to_hf_name, rope_heads
from pixtral.checkpoint.loader import convert, load_model, open_checkpoint
from pixtral.errors import CheckpointError
from tests.factories import MINISTRAL3_CONFIG, family_prompt, random_model

CONFIG = MINISTRAL3_CONFIG
LINEAR = re.compile(
    r"layers\.\d+\.(attention\.w[qkvo]|feed_forward\.w[123])\.weight"
)  # what FP8 releases quantize


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = w.abs().max().float() / 448.0  # e4m3's largest finite value
    return (w.float() / scale).to(torch.float8_e4m3fn), scale.reshape(())


@pytest.fixture(scope="module")
def fp8_folders(tmp_path_factory):
    """(model, native FP8 folder, HF FP8 folder, {native name: (fp8 tensor, scale)})."""
    model = random_model(CONFIG, seed=8)
    state = {n: t for n, t in model.state_dict().items() if n != "output.weight"}  # tied: not stored
    native, hf = tmp_path_factory.mktemp("fp8-native"), tmp_path_factory.mktemp("fp8-hf")
    quantized, native_tensors, hf_tensors = {}, {}, {}
    for name, w in state.items():
        heads = rope_heads(name, CONFIG)
        w_hf = interleaved_to_half(w, *heads) if heads else w
        hf_name = native_to_hf_name(name)
        if LINEAR.fullmatch(name):
            q, scale = quantize(w)
            q_hf, _ = quantize(w_hf)  # same scale (a row permutation keeps the max)
            quantized[name] = (q, scale)
            stem, hf_stem = name.removesuffix(".weight"), hf_name.removesuffix(".weight")
            native_tensors |= {
                name: q,
                f"{stem}.qscale_weight": scale,
                f"{stem}.qscale_act": torch.tensor(0.5),
            }
            hf_tensors |= {
                hf_name: q_hf.contiguous(),
                f"{hf_stem}.weight_scale_inv": scale.reshape(1),
                f"{hf_stem}.activation_scale": torch.tensor([0.5]),
            }
        else:
            native_tensors[name], hf_tensors[hf_name] = w.contiguous(), w_hf.contiguous()
    save_file(native_tensors, str(native / NATIVE_WEIGHTS))
    params = CONFIG.to_params_json() | {
        "quantization": {"qformat_weight": "fp8_e4m3", "qscheme_act": "TENSOR"}
    }
    (native / NATIVE_PARAMS).write_text(json.dumps(params))
    save_file(hf_tensors, str(hf / HF_WEIGHTS))
    hf_config = CONFIG.to_hf_config() | {
        "quantization_config": {
            "quant_method": "fp8",
            "activation_scheme": "static",
            "weight_block_size": None,
        }
    }
    (hf / HF_CONFIG).write_text(json.dumps(hf_config))
    return model, native, hf, quantized


def test_fp8_weights_are_dequantized_to_the_reference_formula(fp8_folders):
    model, native, _, quantized = fp8_folders
    loaded, ckpt = load_model(native)
    assert ckpt.config == CONFIG and len(quantized) == 7 * CONFIG.text.n_layers
    state = loaded.state_dict()
    try:
        from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight
    except ImportError:  # an older transformers: the formula alone
        _dequantize_fp8_weight = None
    for name, (q, scale) in quantized.items():
        expected = q.float() * scale
        assert torch.equal(state[name], expected), name
        if _dequantize_fp8_weight is not None:
            assert torch.equal(state[name], _dequantize_fp8_weight(q, scale, None, torch.float32)), name
        assert not torch.equal(state[name], model.state_dict()[name])  # FP8 really rounded something
    for name, t in model.state_dict().items():
        if name not in quantized:
            assert torch.equal(state[name], t), name


@torch.no_grad()
def test_hf_fp8_spelling_loads_like_native_and_converts(fp8_folders, tmp_path):
    model, native, hf, _ = fp8_folders
    a, _ = load_model(native)
    b, ckpt = load_model(hf)
    assert ckpt.format == "hf"
    for name, t in a.state_dict().items():
        assert torch.equal(b.state_dict()[name], t), name
    ids, images = family_prompt([(2, 3)], CONFIG, seed=1)
    reference = model(ids, images)
    got = a(ids, images)
    assert torch.equal(got, b(ids, images))
    cosine = torch.nn.functional.cosine_similarity(got.flatten(), reference.flatten(), dim=0)
    assert cosine > 0.98, cosine  # FP8 rounding (3 mantissa bits), not a different model
    convert(native, tmp_path / "bf", "native")  # dequantized copies: float32 weights, no scales
    c = open_checkpoint(tmp_path / "bf")
    assert not any("qscale" in n for n in c.sources) and c.stored_dtype == torch.float32
    assert torch.equal(load_model(tmp_path / "bf")[0](ids, images), got)


def test_fp8_errors_name_the_tensor(fp8_folders, tmp_path):
    _, native, _, _ = fp8_folders
    tensors = load_file(str(native / NATIVE_WEIGHTS))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / NATIVE_PARAMS).write_text((native / NATIVE_PARAMS).read_text())
    missing = {k: v for k, v in tensors.items() if k != "layers.0.attention.wq.qscale_weight"}
    save_file(missing, str(tmp_path / "a" / NATIVE_WEIGHTS))
    with pytest.raises(CheckpointError, match="FP8 tensor 'layers.0.attention.wq.weight' has no scale"):
        open_checkpoint(tmp_path / "a")
    blockwise = {**tensors, "layers.0.attention.wq.qscale_weight": torch.ones(4, 2)}
    save_file(blockwise, str(tmp_path / "a" / NATIVE_WEIGHTS))
    with pytest.raises(CheckpointError, match="only per-tensor scales"):
        load_model(tmp_path / "a")


def test_blocks_of_fp8_weights_are_the_blocks_of_the_dequantized_weight(fp8_folders):
    _, native, hf, _ = fp8_folders
    for folder in (native, hf):  # hf: the q/k permutation as well
        for name in ("layers.0.attention.wq.weight", "layers.1.feed_forward.w2.weight"):
            src = open_checkpoint(folder).sources[name]
            whole = src.read()
            assert src.read((8, 40), (16, 48)).dtype == torch.float32
            assert torch.equal(src.read((8, 40), (16, 48)), whole[8:40, 16:48])
