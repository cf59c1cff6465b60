"""The CPU kernel paths (engine/cpu_kernels.py): each runnable here matches its reference, the choice follows
--kernel / PIXTRAL_KERNEL / the CPU's flags, and forcing each path gives the same greedy answer on the demo
model's README sample. Tolerances: int8 paths against the float32 product with the dequantized weight
(logits cosine >= 0.9999, the issue's bound; the oneDNN path's split activations reach ~1e-5 relative)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixtral.checkpoint.loader import set_submodule
from pixtral.engine.cpu_kernels import (
    KERNELS,
    PackedLinear,
    apply_cpu_kernels_,
    cpu_flags,
    describe,
    resolve,
)
from pixtral.engine.quantize import Int4Linear, Int8Linear, quantize_model_
from tests.factories import random_model

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch without oneDNN")


def test_resolve_follows_flag_then_env_then_cpu(monkeypatch):
    monkeypatch.delenv("PIXTRAL_KERNEL", raising=False)
    assert resolve("int4", "onednn") == "aten"  # no faster kernel for int4: always the fallback
    assert resolve("float32", "auto") == "aten"  # MKL's sgemv: batch 1 is not slowed
    if torch.backends.mkldnn.is_available():
        assert resolve("float32", "onednn") == "onednn"  # asked: packed, for batches
    assert resolve("int8", "aten") == "aten"
    monkeypatch.setenv("PIXTRAL_KERNEL", "aten")
    assert resolve("int8", None) == "aten"
    assert resolve("bfloat16", None) == "aten"
    monkeypatch.delenv("PIXTRAL_KERNEL")
    fast = (
        bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"}) and torch.backends.mkldnn.is_available()
    )
    assert resolve("int8", "auto") == ("onednn" if fast else "aten")
    assert "int8" in describe() and "int4 aten" in describe()
    with pytest.raises(ValueError, match="PIXTRAL_KERNEL.*auto, onednn, aten"):
        resolve("int8", "fast")
    assert KERNELS[0] == "auto"


@needs_onednn
@pytest.mark.parametrize("rows", [1, 3, 40])  # decode, a small batch, a prefill block
def test_int8_onednn_matches_the_dequantized_weight(rows):
    torch.manual_seed(0)
    w = torch.randn(96, 64) * 0.05
    x = torch.randn(2, rows, 64) * 3
    x[0, 0, 5] = 40.0  # an outlier: one int8 row per activation row would lose the rest of that row
    lin = Int8Linear.from_weight(w)
    reference = x @ lin.dequantize().T
    lin.use_onednn()
    got = lin(x)
    assert lin.kernel == "onednn" and lin.weight_int8 is None
    torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())
    assert torch.equal(lin.dequantize(), Int8Linear.from_weight(w).dequantize())  # unpacks exactly
    assert lin.weight_bytes() == 96 * 64 + 96 * 2


@needs_onednn
@pytest.mark.parametrize("dtype, atol", [(torch.bfloat16, 2e-2), (torch.float32, 1e-5)])  # bf16: its rounding
def test_packed_linear_equals_f_linear(dtype, atol):
    torch.manual_seed(0)
    lin = nn.Linear(64, 48, bias=True).to(dtype)
    x = torch.randn(3, 5, 64, dtype=dtype)
    packed = PackedLinear(lin)
    torch.testing.assert_close(packed(x).float(), lin(x).float(), rtol=0, atol=atol)
    assert torch.equal(packed.dequantize(), lin.weight.float())
    assert packed.weight.shape == (48, 64) and packed.weight.dtype == dtype


def _dequantized(model: nn.Module) -> nn.Module:
    """The float32 model whose linears hold the quantized layers' dequantized weights (the oracle)."""
    ref = copy.deepcopy(model)
    for name, mod in list(ref.named_modules()):
        if isinstance(mod, (Int8Linear, Int4Linear)):
            lin = nn.Linear(mod.in_features, mod.out_features, bias=False)
            lin.weight.data = mod.dequantize()
            set_submodule(ref, name, lin)
    return ref


@pytest.mark.parametrize("kernel", ["aten", pytest.param("onednn", marks=needs_onednn)])
def test_int8_model_logits_match_the_dequantized_reference(kernel):
    model = random_model()
    quantize_model_(model, "int8")
    reference = _dequantized(model)
    choice = apply_cpu_kernels_(model, kernel)
    assert choice.by_kind["int8"] == kernel
    ids = torch.randint(
        1000, model.config.text.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1)
    )
    with torch.inference_mode():
        a, b = reference(ids).float(), model(ids).float()
    assert F.cosine_similarity(a, b, dim=-1).min() >= 0.9999


@needs_onednn
def test_tied_output_is_not_copied():
    from dataclasses import replace

    from tests.factories import TEST_CONFIG

    model = random_model(replace(TEST_CONFIG, text=replace(TEST_CONFIG.text, tied_embeddings=True)))
    model = model.to(torch.bfloat16)
    choice = apply_cpu_kernels_(model, "onednn")
    assert isinstance(model.layers[0].attention.wq, PackedLinear)
    assert isinstance(model.output, nn.Linear) and model.output.weight is model.tok_embeddings.weight
    assert choice.by_kind["bfloat16"] == "aten (weight shared with the embedding) + onednn"
    assert choice.layers["aten (weight shared with the embedding)"] == 1


@needs_onednn
def test_auto_keeps_small_int8_layers_on_aten(monkeypatch):
    """oneDNN's int8 linear is slow on narrow layers (64 x 2048: ~300x ATen's kernel here): auto takes it only
    for layers of >= 1024 outputs and >= 2 M weights; a forced onednn takes every layer."""
    import pixtral.engine.cpu_kernels as ck

    monkeypatch.setattr(ck, "cpu_flags", lambda: frozenset({"avx512_vnni"}))
    monkeypatch.delenv("PIXTRAL_KERNEL", raising=False)
    model = nn.Sequential(
        Int8Linear.from_weight(torch.randn(1024, 2048)), Int8Linear.from_weight(torch.randn(64, 1024))
    )
    choice = apply_cpu_kernels_(model, "auto")
    assert (model[0].kernel, model[1].kernel) == ("onednn", "aten")
    assert choice.layers == {"onednn": 1, "aten (small int8 layer)": 1}
    apply_cpu_kernels_(model, "onednn")
    assert model[1].kernel == "onednn"


# ---- the demo model's README sample through every path ------------------------------------------


@pytest.mark.parametrize(
    "dtype, quantize",
    [("float32", None), ("bfloat16", None), ("float32", "int8"), ("bfloat16", "int8"), ("float32", "int4")],
)
def test_every_kernel_gives_the_same_greedy_answer_on_the_readme_sample(dtype, quantize):
    from pixtral.engine.engine import Engine
    from pixtral.engine.sampling import SamplingParams
    from tests.demo.test_demo_model import MODEL, README_QUESTION, SAMPLE

    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": str(SAMPLE)}},
                {"type": "text", "text": README_QUESTION},
            ],
        }
    ]
    kernels = ["aten", "onednn"] if torch.backends.mkldnn.is_available() else ["aten"]
    answers = {}
    for kernel in kernels:
        engine = Engine.load(MODEL, dtype=dtype, quantize=quantize, group_size=32, kernel=kernel)
        out = engine.generate(messages, SamplingParams(temperature=0.0, max_tokens=8))
        answers[kernel] = out.text
        engine.close()
    assert len(set(answers.values())) == 1, answers
    assert "blue" in answers["aten"].lower()
