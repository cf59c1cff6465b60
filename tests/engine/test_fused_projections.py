"""Stacked projections (engine/fused_projections.py): a model whose wq/wk/wv and w1/w3 are stacked computes what
the separate layers compute, for every weight kind that stacks (float32 to 1e-5: the same products, summed in
another blocking; quantized kinds bit for bit in their own kernels), through the whole-sequence forward and
through the engine (greedy tokens); kinds that cannot stack are left as they are."""

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from pixtral.engine.cpu_kernels import PackedLinear, apply_cpu_kernels_
from pixtral.engine.fused_projections import fuse_projections_, stack_linears
from pixtral.engine.quantize import Int4Linear, Int8Linear, quantize_model_
from tests.factories import TEST_CONFIG, random_model


def _ids(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1000, model.config.text.vocab_size, (2, 20), generator=g)


@pytest.mark.parametrize("quantize", [None, "int8", "int4"])
def test_stacked_model_computes_what_the_separate_layers_compute(quantize):
    # hidden_dim 128: w1 is whole 64-row blocks of the CPU int4 packing (wk's 32 rows are not)
    model = random_model(replace(TEST_CONFIG, text=replace(TEST_CONFIG.text, hidden_dim=128)))
    if quantize:
        quantize_model_(model, quantize, group_size=32)
    fused = copy.deepcopy(model)
    made = fuse_projections_(fused)
    n_layers = len(model.layers)
    attention, ffn = fused.layers[0].attention, fused.layers[0].feed_forward
    if quantize == "int4":  # int4: wq/wk/wv left separate, since wk is not the last part
        assert made == n_layers and attention.wqkv is None and isinstance(ffn.w13, Int4Linear)
    else:
        assert made == 2 * n_layers
        assert attention.wq is None and ffn.w1 is None and ffn.w3 is None
        assert attention.wqkv.out_features == model.layers[0].attention.wq.out_features + 2 * (
            model.layers[0].attention.wk.out_features
        )
    ids = _ids(model)
    with torch.inference_mode():
        a, b = model(ids), fused(ids)
    if quantize:
        assert torch.equal(a, b)  # per output row the same kernel on the same bytes
    else:
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    assert fuse_projections_(fused) == 0  # once only


def test_kinds_that_cannot_stack_are_left_alone():
    float_layer = nn.Linear(16, 32, bias=False)
    int8_layer = Int8Linear.from_weight(torch.randn(32, 16))
    assert stack_linears([float_layer, int8_layer]) is None  # a mix
    assert stack_linears([nn.Linear(16, 32, bias=True), nn.Linear(16, 32, bias=True)]) is None  # biases
    assert (
        stack_linears([float_layer, copy.deepcopy(float_layer).to(torch.bfloat16)]) is None
    )  # dtypes differ
    if torch.backends.mkldnn.is_available():
        packed = Int8Linear.from_weight(torch.randn(32, 16))
        packed.use_onednn()
        assert stack_linears([packed, packed]) is None  # opaque after packing: stack before the kernels
        assert stack_linears([PackedLinear(float_layer), PackedLinear(float_layer)]) is None


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch without oneDNN")
@pytest.mark.parametrize(
    "dtype, quantize", [(torch.float32, None), (torch.bfloat16, None), (torch.float32, "int8")]
)
def test_stacked_layers_take_the_onednn_kernels(dtype, quantize):
    model = random_model().to(dtype)
    if quantize:
        quantize_model_(model, quantize)
    reference = copy.deepcopy(model)
    apply_cpu_kernels_(reference, "onednn")
    fuse_projections_(model)
    apply_cpu_kernels_(model, "onednn")
    stacked = model.layers[0].attention.wqkv
    assert isinstance(stacked, PackedLinear) or stacked.kernel == "onednn"
    ids = _ids(model)
    with torch.inference_mode():
        a, b = reference(ids).float(), model(ids).float()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).min()
    assert cos >= (0.9999 if dtype == torch.bfloat16 else 0.99999)  # bf16: its rounding in two blockings


def test_engine_load_stacks_and_decodes_as_the_separate_layers(tmp_path):
    from pixtral.checkpoint.formats import write_checkpoint
    from pixtral.config import preset
    from pixtral.engine.engine import Engine
    from pixtral.engine.sampling import SamplingParams
    from pixtral.prompt.tokenizer import load_tokenizer

    model = random_model(preset("tiny"))  # the real tokenizer's vocabulary
    write_checkpoint(tmp_path, "native", model.config, model.state_dict().items())
    engine = Engine.load(tmp_path, kernel="aten")
    assert (
        engine.model.layers[0].attention.wqkv is not None
        and engine.model.layers[0].feed_forward.w13 is not None
    )
    plain = Engine(model, load_tokenizer(None))
    messages = [{"role": "user", "content": "Tell me a story about a blue square."}]
    params = SamplingParams(temperature=0.0, max_tokens=12)
    assert engine.generate(messages, params).token_ids == plain.generate(messages, params).token_ids
    engine.close()
    plain.close()
