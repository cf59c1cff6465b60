"""Which library call multiplies by a weight on the CPU, chosen per machine (issue #21; docs/quantization.md).

Kernels (every one from PyTorch's own libraries: ATen, MKL, oneDNN; nothing hand-written):

- "aten" (the fallback that always works): `F.linear` (MKL / oneDNN through ATen) for float weights,
  `_weight_int8pack_mm` for int8 (weight-only: converts each weight to float before the multiply-add) and
  `_weight_int4pack_mm_for_cpu` for int4.
- "onednn":
  - bfloat16 weights: prepacked into oneDNN's blocked layout once at load (`mkldnn._reorder_linear_weight`),
    multiplied by `mkldnn._linear_pointwise` (AVX512_BF16 / AMX). ATen's bf16 `F.linear` for one row runs at
    about half of float32's bytes/s; the packed call reads at the float32 rate, for half the bytes.
  - float32 weights, only when asked (`--kernel onednn`): the same packed call. With 8 rows it is 2x MKL's
    (whose small-M GEMM reads the weight at 10 GB/s), with 32 rows 1.4x, but with one row ~8% slower than
    MKL's sgemv: `auto` keeps float32 on ATen, so batch-1 decode is not slowed; a server of many concurrent
    float32 requests gains from `onednn`.
  - int8 weights: int8 activations x int8 weights, `onednn.qlinear_pointwise` (VNNI / AMX-INT8, int32
    sums) on a prepacked weight. Each activation row is split into two int8 rows (the value and its rounding
    residual, `Int8Linear._onednn`), so the result is the weight-only one (x times the dequantized weight) to
    ~1e-5, not the ~1% per element of one int8 row (llama.cpp's Q8_0 activations); both rows share one call,
    so the weight is read once.
  - int4 weights: no oneDNN kernel is reachable from PyTorch: int4 layers stay on "aten".

`auto` picks "onednn" for a dtype when the CPU has the instructions that make it fast (int8: AVX512_VNNI,
AVX_VNNI or AMX-INT8; bfloat16: AVX512_BF16 or AMX-BF16) and PyTorch was built with oneDNN, else "aten";
int8 layers narrower than 1024 outputs or under 2 M weights stay on "aten" under `auto` (measured slower).
Float32 weights use "aten" under `auto` (above). Override with
`--kernel` or the PIXTRAL_KERNEL environment variable. Choices were measured by bench/bench_quant.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import nn

from pixtral.engine.host_memory import release_free_host_memory

KERNELS = ("auto", "onednn", "aten")
ENV_VAR = "PIXTRAL_KERNEL"
_FAST_FLAGS = {
    "int8": ("avx512_vnni", "avx_vnni", "amx_int8"),
    "bfloat16": ("avx512_bf16", "amx_bf16"),
}


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (/proc/cpuinfo); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def check_kernel(kernel: str) -> str:
    if kernel not in KERNELS:
        raise ValueError(
            f"unknown kernel {kernel!r} (--kernel / {ENV_VAR}); choose one of {', '.join(KERNELS)}"
        )
    return kernel


def resolve(kind: str, kernel: str | None = "auto") -> str:
    """The kernel for weights of `kind` ("float32", "bfloat16", "int8", "int4"): `kernel` when it is not
    "auto" (None: the PIXTRAL_KERNEL environment variable, else auto), else by the CPU's flags."""
    kernel = check_kernel(kernel or os.environ.get(ENV_VAR) or "auto")
    if kind == "int4":
        return "aten"  # no faster library kernel here (docs/quantization.md, "CPU kernels")
    if not torch.backends.mkldnn.is_available():
        if kernel == "onednn":
            raise ValueError(
                "kernel 'onednn' (--kernel / PIXTRAL_KERNEL): this PyTorch was built without oneDNN"
            )
        return "aten"
    if kernel != "auto":
        return kernel
    if kind == "float32":  # batch 1 is MKL's on the plain weight; --kernel onednn trades some for batches
        return "aten"
    return "onednn" if cpu_flags() & set(_FAST_FLAGS[kind]) else "aten"


def describe(kernel: str | None = "auto") -> str:
    """One line for `pixtral info` / `pixtral bench`: what each weight kind runs on, and why."""
    flags = sorted(cpu_flags() & {f for fs in _FAST_FLAGS.values() for f in fs})
    kinds = ", ".join(f"{k} {resolve(k, kernel)}" for k in ("float32", "bfloat16", "int8", "int4"))
    return f"{kinds} (kernel {kernel or os.environ.get(ENV_VAR) or 'auto'}; {cpu_model_name()}, {' '.join(flags) or 'no VNNI/BF16 flags'})"


# ---- float weights: a prepacked oneDNN linear -------------------------------------------------------


# The rows oneDNN packs weights for (any number runs); docs/quantization.md, "CPU kernels".
PACK_BATCH_HINT = 8


class PackedLinear(nn.Module):
    """A float32 or bfloat16 `nn.Linear` whose weight lives in oneDNN's packed layout (same bytes, read once
    per call).

    `weight` is a meta tensor with the original shape and dtype (for code that reads `.dtype`/`.shape`);
    `dequantize()` gives the values."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach()
        self.in_features, self.out_features, self.dtype = linear.in_features, linear.out_features, w.dtype
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), PACK_BATCH_HINT)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.nbytes = w.numel() * w.element_size()

    @property
    def weight(self) -> torch.Tensor:
        return torch.empty((self.out_features, self.in_features), dtype=self.dtype, device="meta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., K) -> (..., N), the weight's dtype
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def dequantize(self) -> torch.Tensor:
        return self.packed.to_dense().float()  # (N, K)

    def weight_bytes(self) -> int:
        return self.nbytes

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"{str(self.dtype).removeprefix('torch.')} oneDNN-packed"
        )


# ---- applying a choice to a model ---------------------------------------------------------------------


@dataclass
class KernelChoice:
    kernel: str  # what was asked: auto, onednn or aten
    by_kind: dict[str, str] = field(default_factory=dict)  # weight kind -> kernel(s) used, " + "-joined
    layers: dict[str, int] = field(default_factory=dict)  # kernel -> number of linear layers on it

    def __str__(self) -> str:
        used = ", ".join(f"{k} {v}" for k, v in self.by_kind.items()) or "no linear layers"
        counts = ", ".join(f"{n} on {k}" for k, n in self.layers.items())
        return f"CPU kernels: {used} (asked: {self.kernel}; linear layers: {counts})"


def _int8_onednn_pays(out_features: int, in_features: int) -> bool:
    """oneDNN's int8 linear is slow on narrow layers here (one row into 64 x 2048: 7.3 ms, against 25 us for
    `_weight_int8pack_mm`; 128 x 128: 1 ms) and no faster than ATen's kernel on small ones, where the
    activation quantization's ~60 us of small ops outweighs the weight read. `auto` keeps such layers on
    ATen; a forced `onednn` takes every layer (tests exercise the path on tiny models)."""
    return out_features >= 1024 and out_features * in_features >= 1 << 21


def _kind(module: nn.Module) -> str | None:
    from pixtral.engine.quantize import Int4Linear, Int8Linear

    if isinstance(module, Int8Linear):
        return "int8"
    if isinstance(module, Int4Linear):
        return "int4"
    if isinstance(module, nn.Linear):
        return str(module.weight.dtype).removeprefix("torch.")
    return None


@torch.no_grad()
def apply_cpu_kernels_(model: nn.Module, kernel: str | None = "auto") -> KernelChoice:
    """Put every linear layer of a CPU inference model on the kernel chosen for its weight kind, in place.

    Float weights shared with another module (tied embeddings) are left as they are: packing would copy them.
    Call once, after loading (a layer already packed is left alone)."""
    choice = KernelChoice(check_kernel(kernel or os.environ.get(ENV_VAR) or "auto"))
    shared = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    for name, module in list(model.named_modules()):
        kind = _kind(module)
        if kind is None or kind == "float16":
            continue
        if any(t.device.type != "cpu" for t in [*module.parameters(), *module.buffers()]):
            continue  # these are CPU kernels
        used = resolve(kind, choice.kernel)
        if used == "onednn" and kind in ("float32", "bfloat16"):
            if id(module.weight) in shared:
                used = "aten (weight shared with the embedding)"
            else:
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, PackedLinear(module))
        elif used == "onednn" and kind == "int8":
            if choice.kernel == "auto" and not _int8_onednn_pays(module.out_features, module.in_features):
                used = "aten (small int8 layer)"
            else:
                module.use_onednn()
        if used == "onednn":
            release_free_host_memory()  # the unpacked weight just freed (engine/host_memory.py)
        choice.layers[used] = choice.layers.get(used, 0) + 1
        seen = choice.by_kind.get(kind)
        choice.by_kind[kind] = (
            used if seen in (None, used) else " + ".join(sorted({*seen.split(" + "), used}))
        )
    return choice
