"""GGUF export read back with `gguf.GGUFReader`: names, shapes, types, metadata; values round-trip in f32;
and a minimal llama.cpp-convention forward pass (ggml "normal" RoPE on adjacent pairs, GQA, SwiGLU) run
from the GGUF tensors alone gives our model's logits, which pins the q/k layout and head_dim metadata.

Tolerances of that forward pass vs our float32 model: f32 max |diff| <= 1e-4 x max |logit|;
f16 logit cosine >= 0.9999; q8_0 cosine >= 0.999 (measured: see the asserts' messages on failure).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

gguf = pytest.importorskip("gguf")

from pixtral.checkpoint.gguf_export import IMG_BREAK_TENSOR, export_gguf, gguf_name  # noqa: E402
from pixtral.checkpoint.loader import load_model, open_checkpoint, save_model  # noqa: E402
from tests.factories import TEST_CONFIG, random_model  # noqa: E402

T = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    folder = tmp_path_factory.mktemp("g") / "model"
    save_model(random_model(seed=11), folder, "native")
    return folder


@pytest.fixture(scope="module")
def exported(src, tmp_path_factory):
    out = {}
    for dtype in ("f32", "f16", "q8_0"):
        dst = tmp_path_factory.mktemp(dtype) / "model.gguf"
        out[dtype] = export_gguf(src, dst, dtype)
    return out


def fields(reader) -> dict:
    """Scalar and short array fields (the vocabulary's long arrays are read on demand: they are slow)."""
    return {
        key: f.contents()
        for key, f in reader.fields.items()
        if not key.startswith("GGUF.") and len(f.data) <= 16
    }


def tensors(reader) -> dict:
    return {t.name: t for t in reader.tensors}


def values(t) -> np.ndarray:
    """A GGUF tensor as float32 numpy in numpy (row-major) shape."""
    if t.tensor_type in (T.F32, T.F16):
        return np.asarray(t.data, dtype=np.float32).reshape(tuple(reversed(t.shape.tolist())))
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))


# ---- names, shapes, types, metadata --------------------------------------------------------------


def test_decoder_tensor_names_shapes_and_types(src, exported):
    ckpt = open_checkpoint(src)
    n = TEST_CONFIG.text.n_layers
    for dtype, result in exported.items():
        reader = gguf.GGUFReader(result.model_path)
        ts = tensors(reader)
        expected = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
            f"blk.{i}.{p}.weight"
            for i in range(n)
            for p in (
                "attn_norm",
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "ffn_norm",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
            )
        }
        assert set(ts) == expected
        for native, source in ckpt.sources.items():
            kind, name = gguf_name(native)
            if kind != "model":
                continue
            # GGUF stores dims fastest-first (ggml ne): the reverse of the numpy/torch shape
            assert tuple(reversed(ts[name].shape.tolist())) == source.shape, name
            if len(source.shape) == 1:
                assert ts[name].tensor_type == T.F32
            else:
                want = {"f32": T.F32, "f16": T.F16, "q8_0": T.Q8_0}[dtype]
                if dtype == "q8_0" and source.shape[-1] % 32:
                    want = T.F16
                assert ts[name].tensor_type == want, (dtype, name)


def test_decoder_metadata(exported):
    t = TEST_CONFIG.text
    f = fields(gguf.GGUFReader(exported["f16"].model_path))
    assert f["general.architecture"] == "llama"
    assert f["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert f["llama.block_count"] == t.n_layers
    assert f["llama.embedding_length"] == t.dim
    assert f["llama.feed_forward_length"] == t.hidden_dim
    assert f["llama.attention.head_count"] == t.n_heads
    assert f["llama.attention.head_count_kv"] == t.n_kv_heads
    assert f["llama.attention.key_length"] == f["llama.attention.value_length"] == t.head_dim == 16
    assert f["llama.rope.dimension_count"] == t.head_dim
    assert f["llama.context_length"] == t.max_seq_len
    assert f["llama.vocab_size"] == t.vocab_size
    assert math.isclose(f["llama.rope.freq_base"], t.rope_theta, rel_tol=1e-6)
    assert math.isclose(f["llama.attention.layer_norm_rms_epsilon"], t.norm_eps, rel_tol=1e-6)
    q8 = fields(gguf.GGUFReader(exported["q8_0"].model_path))
    assert q8["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0


def test_tokenizer_skipped_with_a_note_when_the_vocabulary_differs(exported):
    result = exported["f32"]
    assert not result.tokenizer and "tokenizer has 131072 tokens but the model 1200" in result.notes[0]
    assert "tokenizer.ggml.tokens" not in gguf.GGUFReader(result.model_path).fields


def test_f32_values_round_trip_exactly(src, exported):
    ckpt = open_checkpoint(src)
    model_ts = tensors(gguf.GGUFReader(exported["f32"].model_path))
    mm_ts = tensors(gguf.GGUFReader(exported["f32"].mmproj_path))
    for native, source in ckpt.sources.items():
        kind, name = gguf_name(native)
        t = (model_ts if kind == "model" else mm_ts)[name]
        want = source.read().float().numpy()
        got = values(t)
        if name == "v.patch_embd.weight":  # kept in f16 like llama.cpp
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_mmproj_names_metadata_and_img_break_row(src, exported):
    config = TEST_CONFIG
    reader = gguf.GGUFReader(exported["f16"].mmproj_path)
    f, ts = fields(reader), tensors(reader)
    assert f["general.architecture"] == "clip"
    assert f["general.type"] == "mmproj"
    assert f["clip.projector_type"] == "pixtral"
    assert f["clip.has_vision_encoder"] is True
    assert f["clip.use_silu"] is True
    assert f["clip.vision.projection_dim"] == config.text.dim
    assert f["clip.vision.embedding_length"] == config.vision.hidden_size
    assert f["clip.vision.block_count"] == config.vision.num_hidden_layers
    assert f["clip.vision.attention.head_count"] == config.vision.num_attention_heads
    assert f["clip.vision.image_size"] == config.vision.image_size
    assert f["clip.vision.patch_size"] == 16
    assert np.allclose(f["clip.vision.image_mean"], [0.48145466, 0.4578275, 0.40821073])
    names = set(ts)
    assert {
        "v.patch_embd.weight",
        "v.pre_ln.weight",
        "mm.1.weight",
        "mm.1.bias",
        "mm.2.weight",
        "mm.2.bias",
    } <= names
    assert {
        f"v.blk.1.{p}.weight"
        for p in ("attn_q", "attn_k", "attn_v", "attn_out", "ln1", "ln2", "ffn_gate", "ffn_up", "ffn_down")
    } <= names
    assert len(names) == 2 + 9 * config.vision.num_hidden_layers + 4 + 1
    assert tuple(reversed(ts["v.patch_embd.weight"].shape.tolist())) == (32, 3, 16, 16)
    assert tuple(reversed(ts["mm.1.weight"].shape.tolist())) == (config.text.dim, config.vision.hidden_size)
    model, _ = load_model(src)
    row = model.tok_embeddings.weight[config.vision.image_break_token_id].detach().numpy()
    np.testing.assert_array_equal(values(ts[IMG_BREAK_TENSOR]), row)


def test_bad_dtype_is_an_error(src, tmp_path):
    with pytest.raises(ValueError, match="q8_0"):
        export_gguf(src, tmp_path / "x.gguf", "q4_k")


def test_no_mmproj_when_asked(src, tmp_path):
    result = export_gguf(src, tmp_path / "only.gguf", "f32", mmproj=False)
    assert result.mmproj_path is None and not (tmp_path / "mmproj-only.gguf").exists()


# ---- a llama.cpp-convention forward pass from the GGUF file alone ---------------------------------


def llama_forward(path, ids: list[int]) -> torch.Tensor:
    """Logits (T, vocab) of a llama-architecture GGUF, computed the way llama.cpp defines the model:
    RMSNorm, rope mode 0 ("normal": pairs (2i, 2i+1) rotated by pos * base^(-2i/n_rot)), GQA, SwiGLU."""
    reader = gguf.GGUFReader(path)
    f, ts = fields(reader), tensors(reader)
    W = {n: torch.from_numpy(values(t).copy()) for n, t in ts.items()}
    n_head, n_kv, hd = (
        f["llama.attention.head_count"],
        f["llama.attention.head_count_kv"],
        f["llama.attention.key_length"],
    )
    base, eps, n_rot = (
        f["llama.rope.freq_base"],
        f["llama.attention.layer_norm_rms_epsilon"],
        f["llama.rope.dimension_count"],
    )

    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def rope(x):  # (T, H, hd)
        pos = torch.arange(x.shape[0], dtype=torch.float64)[:, None]
        theta = pos * base ** (-torch.arange(0, n_rot, 2, dtype=torch.float64) / n_rot)  # (T, hd/2)
        cos, sin = theta.cos().float()[:, None], theta.sin().float()[:, None]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)

    t = len(ids)
    x = W["token_embd.weight"][ids]
    for i in range(f["llama.block_count"]):
        p = f"blk.{i}."
        h = norm(x, W[p + "attn_norm.weight"])
        q = rope((h @ W[p + "attn_q.weight"].T).view(t, n_head, hd))
        k = rope((h @ W[p + "attn_k.weight"].T).view(t, n_kv, hd))
        v = (h @ W[p + "attn_v.weight"].T).view(t, n_kv, hd)
        k, v = k.repeat_interleave(n_head // n_kv, 1), v.repeat_interleave(n_head // n_kv, 1)
        att = F.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True
        )
        x = x + att.transpose(0, 1).reshape(t, -1) @ W[p + "attn_output.weight"].T
        h = norm(x, W[p + "ffn_norm.weight"])
        gate, up = h @ W[p + "ffn_gate.weight"].T, h @ W[p + "ffn_up.weight"].T
        x = x + (F.silu(gate) * up) @ W[p + "ffn_down.weight"].T
    return norm(x, W["output_norm.weight"]) @ W["output.weight"].T


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_llama_forward_from_gguf_matches_our_model(src, exported, dtype):
    model, _ = load_model(src)
    ids = [1, 5, 900, 33, 1100, 250, 7, 640, 12, 1000]
    with torch.inference_mode():
        ours = model(torch.tensor([ids]))[0]
    theirs = llama_forward(exported[dtype].model_path, ids)
    cos = F.cosine_similarity(ours, theirs, dim=-1)
    if dtype == "f32":
        diff = (ours - theirs).abs().max().item()
        assert diff <= 1e-4 * ours.abs().max().item(), diff
    else:
        assert cos.min().item() >= (0.9999 if dtype == "f16" else 0.999), cos


def test_permuted_qk_would_be_caught(src, exported):
    """The forward-pass check is sensitive to the q/k layout: half-split rows (HF layout) break it."""
    from pixtral.checkpoint.hf_names import interleaved_to_half

    model, _ = load_model(src)
    t = TEST_CONFIG.text
    with torch.no_grad():
        for layer in model.layers:
            layer.attention.wq.weight.copy_(
                interleaved_to_half(layer.attention.wq.weight, t.n_heads, t.head_dim)
            )
            layer.attention.wk.weight.copy_(
                interleaved_to_half(layer.attention.wk.weight, t.n_kv_heads, t.head_dim)
            )
    ids = [1, 5, 900, 33, 1100, 250, 7, 640, 12, 1000]
    with torch.inference_mode():
        ours = model(torch.tensor([ids]))[0]
    theirs = llama_forward(exported["f32"].model_path, ids)
    assert (ours - theirs).abs().max().item() > 1e-2 * ours.abs().max().item()


# ---- the tokenizer (real tekken vocabulary: the 'tiny' preset) -------------------------------------


@pytest.mark.slow
def test_tekken_tokenizer_metadata(tiny_f32_export):
    _, tiny_export = tiny_f32_export
    from pixtral.prompt.tokenizer import packaged_tokenizer

    assert tiny_export.tokenizer and not tiny_export.notes
    reader = gguf.GGUFReader(tiny_export.model_path)
    f = fields(reader)
    assert f["tokenizer.ggml.model"] == "gpt2"
    assert f["tokenizer.ggml.pre"] == "tekken"
    assert f["tokenizer.ggml.bos_token_id"] == 1 and f["tokenizer.ggml.eos_token_id"] == 2
    assert f["tokenizer.ggml.add_bos_token"] is True and f["tokenizer.ggml.add_eos_token"] is False
    assert f["tokenizer.chat_template"] == "mistral-v3-tekken"
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = reader.fields["tokenizer.ggml.merges"].contents()
    assert len(tokens) == len(types) == 131072
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and tokens[10] == "[IMG]" and tokens[12] == "[IMG_BREAK]"
    assert types[10] == gguf.TokenType.CONTROL and types[5000] == gguf.TokenType.NORMAL
    assert len(merges) > 100_000
    # a word's id in our tokenizer names the same (GPT-2 byte-encoded) string in the GGUF vocabulary
    tekken = packaged_tokenizer().instruct_tokenizer.tokenizer
    (hello,) = tekken.encode(" hello", bos=False, eos=False)
    assert tokens[hello] == "Ġhello"


def test_patch_merger_model_exports_llama_cpp_merger_keys(tmp_path):
    """Mistral Small 3.1+ shape: mm.input_norm / mm.patch_merger (stored as is, channel-major) and
    clip.vision.spatial_merge_size; the tekken v7 tokenizer gets llama.cpp's v7 template."""
    from pixtral.config import with_text
    from tests.factories import MISTRAL3_CONFIG
    from tests.prompt.family_tekken import VOCAB, write_family_tekken

    config = with_text(MISTRAL3_CONFIG, vocab_size=VOCAB)
    model = random_model(config, seed=4)
    save_model(model, tmp_path / "m", "native")
    write_family_tekken(tmp_path / "m", "v7", 14, 280, 2)
    result = export_gguf(tmp_path / "m", tmp_path / "out" / "m.gguf", "f32")
    mm = gguf.GGUFReader(result.mmproj_path)
    t = tensors(mm)
    state = model.state_dict()
    np.testing.assert_array_equal(
        values(t["mm.input_norm.weight"]), state["pre_mm_projector_norm.weight"].numpy()
    )
    np.testing.assert_array_equal(
        values(t["mm.patch_merger.weight"]), state["patch_merger.merging_layer.weight"].numpy()
    )
    assert fields(mm)["clip.vision.spatial_merge_size"] == 2 and fields(mm)["clip.vision.patch_size"] == 14
    assert "output.weight" in tensors(gguf.GGUFReader(result.model_path))
    assert (
        result.tokenizer
        and fields(gguf.GGUFReader(result.model_path))["tokenizer.chat_template"] == "mistral-v7-tekken"
    )


def test_yarn_decoders_are_refused_with_a_reason(tmp_path):
    from pixtral.errors import CheckpointError
    from tests.factories import MINISTRAL3_CONFIG

    save_model(random_model(MINISTRAL3_CONFIG), tmp_path / "m", "native")
    with pytest.raises(CheckpointError, match="YaRN / llama-4-scaled decoder"):
        export_gguf(tmp_path / "m", tmp_path / "m.gguf")
