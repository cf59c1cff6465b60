"""Weight-only int8 / int4: per-matrix error bounds, kernels against a dequantized reference, the model
transform, quantize-while-loading (same result as load-then-quantize), generation, and quality bounds.

Quality bounds (the test model of tests/factories.py: random weights with std 0.15 and jittered norms, so
its logits are peaked and errors are amplified layer to layer; 4 prompts x (12 + 16) positions):
    int8:           logit cosine mean >= 0.999, min >= 0.995, teacher-forced top-1 >= 0.95
    int4 group 32:  logit cosine mean >= 0.93, min >= 0.6, teacher-forced top-1 >= 0.45
Measured on this machine: int8 0.99965 / 0.99869 / 0.982; int4 g32 0.9555 / 0.849 / 0.598
(docs/quantization.md has the larger-model figures).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pixtral.checkpoint.loader import load_model, save_model
from pixtral.engine import quantize as qz
from pixtral.engine.generate import greedy_generate_ids
from pixtral.engine.quantize import (
    Int4Linear,
    Int8Linear,
    compare_models,
    dequantize_int4,
    dequantize_int8,
    load_quantized,
    quantize_int4,
    quantize_int8,
    quantize_model_,
    random_prompts,
)
from tests.factories import TEST_CONFIG, random_model


def _w(n: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[:, 3] *= 20  # an outlier column, as real LLM weights have
    return w


# ---- one matrix ---------------------------------------------------------------------------------


def test_int8_error_is_at_most_half_a_step_per_element():
    w = _w(96, 80)
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and s.dtype == torch.bfloat16 and s.shape == (96,)
    err = (w - dequantize_int8(q, s)).abs()
    assert bool((err <= s.float()[:, None] / 2 * (1 + 1e-5) + 1e-8).all())
    assert int(q.abs().max()) >= 126  # the range is used: the row maximum maps to +-127


def test_int8_zero_rows_do_not_divide_by_zero():
    w = torch.zeros(16, 32)
    q, s = quantize_int8(w)
    assert torch.equal(dequantize_int8(q, s), w)


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_error_is_at_most_half_a_step_per_group(group_size):
    w = _w(64, 256)
    q, sz = quantize_int4(w, group_size)
    assert q.min() >= 0 and q.max() <= 15
    assert sz.shape == (256 // group_size, 64, 2)
    step = sz[..., 0].float().T.repeat_interleave(group_size, dim=1)  # (N, K)
    err = (w - dequantize_int4(q, sz, group_size)).abs()
    # half a step, plus what the bf16 rounding of the zero point shifts (<= 2^-8 of |zero|)
    zero = sz[..., 1].float().abs().T.repeat_interleave(group_size, dim=1)
    assert bool((err <= step / 2 + zero * 2**-8 + 1e-6).all())


def test_int4_rejects_a_group_size_that_does_not_divide_the_row():
    with pytest.raises(ValueError, match="multiple"):
        quantize_int4(torch.randn(16, 96), 64)


def test_int4_packing_in_row_chunks_equals_packing_whole(monkeypatch):
    q = torch.randint(0, 16, (256, 128), dtype=torch.int32)
    whole = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    monkeypatch.setattr(qz, "_CHUNK_ROWS", 64)
    assert torch.equal(qz._pack_int4(q), whole)


# ---- kernels vs the dequantized weight ------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 5])
def test_int8_linear_matches_matmul_with_dequantized_weight(rows):
    w = _w(96, 80, seed=1)
    lin = Int8Linear.from_weight(w)
    x = torch.randn(2, rows, 80)
    ref = x.to(torch.bfloat16).float() @ lin.dequantize().T
    y = lin(x)
    assert y.dtype == torch.float32 and y.shape == (2, rows, 96)
    torch.testing.assert_close(y, ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())


@pytest.mark.parametrize("block", [1 << 25, 80 * 7])
def test_int8_prefill_path_is_float32_matmul_with_the_dequantized_weight(monkeypatch, block):
    monkeypatch.setattr(qz, "_PREFILL_BLOCK", block)  # 80 * 7: blocks of 7 rows, the last one short
    w = _w(96, 80, seed=4)
    lin = Int8Linear.from_weight(w)
    x = torch.randn(3, qz.PREFILL_ROWS, 80)
    torch.testing.assert_close(lin(x), x @ lin.dequantize().T, rtol=1e-5, atol=1e-5)
    xb = x.to(torch.bfloat16)
    assert lin(xb).dtype == torch.bfloat16


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_linear_matches_matmul_with_dequantized_weight(group_size):
    w = _w(64, 256, seed=2)
    lin = Int4Linear.from_weight(w, group_size)
    q, sz = quantize_int4(w, group_size)
    deq = dequantize_int4(q, sz, group_size)
    torch.testing.assert_close(lin.dequantize(), deq, rtol=1e-2, atol=1e-2 * deq.abs().max().item())
    x = torch.randn(3, 256)
    ref = x.to(torch.bfloat16).float() @ deq.T
    torch.testing.assert_close(lin(x), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())


def test_quantized_linear_is_much_closer_than_a_wrong_quantization():
    """The comparison above can fail: a weight with one scale off by 2x is far outside the tolerance."""
    w = _w(64, 256, seed=3)
    lin = Int8Linear.from_weight(w)
    x = torch.randn(4, 256)
    ref = x.to(torch.bfloat16).float() @ lin.dequantize().T
    lin.scales[0] *= 2
    assert not torch.allclose(lin(x), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())
    lin.scales[0] /= 2
    assert torch.allclose(lin(x), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())


def test_bias_and_weight_descriptor():
    lin = nn.Linear(64, 32, bias=True)
    q = qz.quantized_linear(lin.weight.detach(), "int8", bias=lin.bias)
    x = torch.randn(2, 64)
    torch.testing.assert_close(q(x), lin(x), rtol=0.05, atol=0.02)
    assert q.weight.shape == (32, 64) and q.weight.dtype == torch.float32 and q.weight.is_meta


# ---- the model transform ------------------------------------------------------------------------


def test_quantize_model_replaces_decoder_linears_and_output_only():
    model = random_model()
    summary = quantize_model_(model, "int8")
    n_layers = TEST_CONFIG.text.n_layers
    assert len(summary.quantized) == 7 * n_layers + 1 and not summary.skipped
    assert isinstance(model.output, Int8Linear)
    assert isinstance(model.layers[0].attention.wq, Int8Linear)
    assert isinstance(model.layers[1].feed_forward.w2, Int8Linear)
    vision_linears = [m for m in model.vision_encoder.modules() if isinstance(m, nn.Linear)]
    assert vision_linears and all(type(m) is nn.Linear for m in vision_linears)
    assert all(
        type(m) is nn.Linear for m in model.vision_language_adapter.modules() if isinstance(m, nn.Linear)
    )
    assert model.dtype == torch.float32  # Pixtral.dtype reads output.weight.dtype


def test_quantize_model_without_output_head():
    model = random_model()
    summary = quantize_model_(model, "int8", include_output=False)
    assert type(model.output) is nn.Linear and "output" not in summary.quantized


def test_int4_keeps_layers_the_kernel_cannot_take():
    model = random_model()  # hidden_dim 96: w2's rows (96 inputs) do not split into groups of 64
    summary = quantize_model_(model, "int4", group_size=64)
    assert summary.skipped == [f"layers.{i}.feed_forward.w2" for i in range(TEST_CONFIG.text.n_layers)]
    assert type(model.layers[0].feed_forward.w2) is nn.Linear
    assert isinstance(model.layers[0].feed_forward.w1, Int4Linear)


def test_bad_mode_and_group_size_are_errors():
    with pytest.raises(ValueError, match="unknown quantization"):
        quantize_model_(random_model(), "int3")
    with pytest.raises(ValueError, match="group size"):
        quantize_model_(random_model(), "int4", group_size=48)


@pytest.mark.parametrize(
    ("mode", "group_size", "cos_mean", "cos_min", "top1"),
    [("int8", 128, 0.999, 0.995, 0.95), ("int4", 32, 0.93, 0.6, 0.45)],
)
def test_quality_bounds(mode, group_size, cos_mean, cos_min, top1):
    ref = random_model()
    model = random_model()
    quantize_model_(model, mode, group_size)
    report = compare_models(ref, model, random_prompts(TEST_CONFIG.text.vocab_size, n=4, length=12), 16)
    assert report.positions == 4 * 28
    assert report.logit_cosine_mean >= cos_mean, report
    assert report.logit_cosine_min >= cos_min, report
    assert report.top1_agreement >= top1, report


def test_compare_models_of_a_model_with_itself_is_perfect():
    model = random_model()
    r = compare_models(model, model, random_prompts(TEST_CONFIG.text.vocab_size, n=1, length=6), 4)
    assert r.logit_cosine_min > 0.99999 and r.top1_agreement == 1.0 and r.greedy_prefix == 1.0


# ---- quantize while loading ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("q") / "model"
    save_model(random_model(seed=3), folder, "native")
    return folder


@pytest.mark.parametrize(("mode", "group_size"), [("int8", 128), ("int4", 32)])
def test_load_quantized_equals_load_then_quantize(saved_model, mode, group_size):
    a, _, summary = load_quantized(saved_model, mode, dtype="float32", group_size=group_size)
    b, _ = load_model(saved_model, "float32")
    quantize_model_(b, mode, group_size)
    assert summary.quantized and not any(p.is_meta for p in a.parameters())
    ids = random_prompts(TEST_CONFIG.text.vocab_size, n=1, length=10)[0]
    with torch.inference_mode():
        assert torch.equal(a(ids), b(ids))


def test_load_quantized_from_hf_format(tmp_path, saved_model):
    save_model(load_model(saved_model)[0], tmp_path / "hf", "hf")
    a, _, _ = load_quantized(saved_model, "int8", dtype="float32")
    b, _, _ = load_quantized(tmp_path / "hf", "int8", dtype="float32")
    ids = random_prompts(TEST_CONFIG.text.vocab_size, n=1, length=10)[0]
    with torch.inference_mode():
        assert torch.equal(a(ids), b(ids))


def test_quantized_bf16_model_generates_with_the_kv_cache(saved_model):
    model, _, _ = load_quantized(saved_model, "int8", dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and model.tok_embeddings.weight.dtype == torch.bfloat16
    prompt = random_prompts(TEST_CONFIG.text.vocab_size, n=1, length=8)[0]
    cached = greedy_generate_ids(model, prompt[0].tolist(), [], 8)
    uncached = qz._greedy(model, prompt, 8)
    assert len(cached) == 8
    # bf16 activations: the cached and uncached paths may round differently; they agree at the start
    assert cached[:2] == uncached[:2]


def test_load_quantized_keeps_only_the_quantized_weights(saved_model):
    model, _, summary = load_quantized(saved_model, "int8", dtype="float32")
    linear_params = sum(
        m.in_features * m.out_features for n, m in model.named_modules() if n in set(summary.quantized)
    )
    int8_bytes = sum(b.numel() for n, b in model.named_buffers() if n.endswith("weight_int8"))
    assert int8_bytes == linear_params
    full = [n for n, _ in model.named_parameters() if n.endswith(("wq.weight", "w1.weight", "output.weight"))]
    assert full and all(n.startswith("vision_encoder.") for n in full)


def test_quantizing_from_row_chunks_equals_quantizing_the_whole_tensor(saved_model, monkeypatch):
    from pixtral.checkpoint.loader import open_checkpoint

    src = open_checkpoint(saved_model).sources["output.weight"]
    whole_q, whole_s = quantize_int8(src.read())
    monkeypatch.setattr(qz, "_CHUNK_ROWS", 7)  # many chunks, the last one short
    q, s = quantize_int8(src.read_rows, tuple(src.shape))
    assert torch.equal(q, whole_q) and torch.equal(s, whole_s)
    q4, sz4 = quantize_int4(src.read_rows, 32, tuple(src.shape))
    assert torch.equal(q4, quantize_int4(src.read(), 32)[0]) and sz4.shape == (2, 1200, 2)


# ---- the CUDA paths, run on the CPU (their kernels are CUDA-only; the GPU check runs them for real) ------


def test_int8_cuda_path_matches_the_packed_cpu_kernel():
    q, s = quantize_int8(_w(48, 64))
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    cpu = torch.ops.aten._weight_int8pack_mm(x, q, s).float()
    unpacked = qz.int8_linear_unpacked(x, q, s).float()
    torch.testing.assert_close(unpacked, cpu, rtol=2e-2, atol=2e-2)  # both bfloat16 (7-bit mantissa) outputs


def test_int4_cuda_packing_puts_even_columns_in_the_high_nibble_and_tiles_for_the_kernel():
    q = torch.randint(0, 16, (64, 256), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    nibbles = qz.int4_nibbles(q)  # (N, K / 2) uint8
    assert nibbles.shape == (64, 128) and nibbles.dtype == torch.uint8
    assert torch.equal((nibbles >> 4).int(), q[:, 0::2]) and torch.equal((nibbles & 15).int(), q[:, 1::2])
    packed = qz._pack_int4_cuda(q.to("meta"))  # the kernel's meta function gives its output layout
    assert packed.shape == (64 // 8, 256 // (16 * 8), 32, 8 // 2) and packed.dtype == torch.int32
    assert qz.cuda_inner_k_tiles(96) == 2 and qz.cuda_inner_k_tiles(64) == 4


def test_int4_weights_packed_for_one_device_refuse_to_run_on_another():
    layer = Int4Linear.from_weight(_w(32, 64), group_size=32)
    assert layer.packed_for == "cpu"
    layer.packed_for = "cuda"  # as if packed on a GPU, then moved to the CPU
    with pytest.raises(RuntimeError, match="packed for cuda cannot run on cpu"):
        layer(torch.randn(2, 64))
    assert qz.can_quantize("int4", 8, 64, 32, "cuda") and not qz.can_quantize("int4", 8, 64, 32, "cpu")
