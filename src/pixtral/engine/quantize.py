"""Weight-only int8 / int4 quantization of the decoder's linear layers, gpt-fast style.

The model is quantized as a transform: each target `nn.Linear` is replaced by a module holding the quantized
weight and calling PyTorch's own kernels for the device the weight is on (no hand-written matmul):

- int8: symmetric, one scale per output channel. CPU: `torch.ops.aten._weight_int8pack_mm`; CUDA (which has
  no such kernel): the int8 weight cast to the activation dtype inside `F.linear`, then the scales, as gpt-fast
  does (torch.compile fuses the cast; eager reads the weight twice, so the gain there is memory, not speed).
- int4: asymmetric, one (scale, zero) pair per group of `group_size` input columns (32, 64 or 128).
  CPU: `_convert_weight_to_int4pack_for_cpu` (int32 (N, K) in) + `_weight_int4pack_mm_for_cpu`;
  CUDA: `_convert_weight_to_int4pack` (two values per uint8, (N, K / 2) in; sm80+) + `_weight_int4pack_mm`.
  The packed layouts differ, so an int4 module is packed for one device type: quantize on the device the
  model runs on (`load_quantized(..., device=)`, `Engine.load(quantize=, device=)`); running it elsewhere
  raises.

Targets: the decoder's attention (wq, wk, wv, wo) and FFN (w1, w2, w3) and, by default, the output head
(a third of the bytes read per token in the 'small' preset). The vision encoder, the adapter, the embedding
and the norms are left as they are. Both kernels compute with bfloat16 activations (their float32 paths are
5-10x slower here); the quantized module casts its input to bfloat16 and its output back, so a float32 model
stays a float32 model around the quantized layers. For int8 prefill (>= PREFILL_ROWS input rows) the packed
kernel is slower than float32 GEMM, so blocks of rows are dequantized to float32 and fed to the GEMM instead.

Two ways in, the same result:
- `quantize_model_(model, "int8")` on a loaded model;
- `load_quantized(path, "int8")` quantizes while loading, tensor by tensor, so the full-precision weights
  never exist all at once (peak RSS ~ the quantized model + one tensor; the 12B shape loads in < 15 GiB).

Quality is measured by `compare_models` (logit cosine, teacher-forced top-1 and greedy agreement vs the
unquantized model); bounds are in docs/quantization.md and tests/quantize/.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pixtral.checkpoint.loader import Checkpoint, LoadPlan, Readable, load_model, set_submodule
from pixtral.engine.cpu_kernels import PACK_BATCH_HINT
from pixtral.model.norm import RMSNorm
from pixtral.model.pixtral import Pixtral

MODES = ("int8", "int4")
GROUP_SIZES = (32, 64, 128, 256)
KERNEL_DTYPE = torch.bfloat16  # activations inside the packed kernels and the stored scales
PREFILL_ROWS = 16  # int8 inputs with at least this many rows take the dequantize + float32 GEMM path
_PREFILL_BLOCK = 1 << 25  # weight elements dequantized at a time on that path (128 MB of float32)
_CHUNK_ROWS = 4096  # rows quantized at a time: bounds the float32 temporaries (12B output head: 80 MB)

_DECODER_LINEAR = re.compile(r"^layers\.\d+\.(attention\.(wq|wk|wv|wo)|feed_forward\.(w1|w2|w3))$")


def is_target(module_name: str, include_output: bool = True) -> bool:
    """Whether the linear layer with this (native) module name is quantized."""
    return bool(_DECODER_LINEAR.match(module_name)) or (include_output and module_name == "output")


def _check_mode(mode: str, group_size: int) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown quantization {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "int4" and group_size not in GROUP_SIZES:
        raise ValueError(f"int4 group size must be one of {GROUP_SIZES}, got {group_size}")


# ---- quantize / dequantize one weight matrix ------------------------------------------------------


RowReader = Callable[[int, int], torch.Tensor]  # (first row, end row) -> those rows of a weight


def _rows(w: torch.Tensor | RowReader, shape: tuple[int, int] | None) -> tuple[RowReader, int, int]:
    """A weight given as a tensor, or as a function reading its rows (from a file) with its shape."""
    if isinstance(w, torch.Tensor):
        return (lambda a, b: w[a:b]), w.shape[0], w.shape[1]
    if shape is None:
        raise ValueError("a row reader needs the weight's shape")
    return w, shape[0], shape[1]


@torch.no_grad()
def quantize_int8(
    w: torch.Tensor | RowReader, shape: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> int8 (N, K) and bfloat16 scales (N,), symmetric per output row: w ~ q * scale.

    The scale is rounded to bfloat16 first and q computed from the rounded scale, so the stored pair is
    self-consistent (|w - q * scale| <= scale / 2 per element). `w` may be a row reader (see `_rows`):
    the rows are then read and quantized _CHUNK_ROWS at a time, never all in memory."""
    read, n, k = _rows(w, shape)
    q = torch.empty((n, k), dtype=torch.int8)
    scales = torch.empty(n, dtype=KERNEL_DTYPE)
    for r in range(0, n, _CHUNK_ROWS):
        chunk = read(r, min(r + _CHUNK_ROWS, n)).float()
        s = (chunk.abs().amax(dim=1) / 127.0).clamp(min=1e-10).to(KERNEL_DTYPE)
        s32 = s.float()
        # (rows, K) / (rows, 1): round half to even, clamp to the int8 range
        q[r : r + _CHUNK_ROWS] = torch.round(chunk / s32[:, None]).clamp_(-128, 127).to(torch.int8)
        scales[r : r + _CHUNK_ROWS] = s
    return q, scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return q.float() * scales.float()[:, None]


@torch.no_grad()
def quantize_int4(
    w: torch.Tensor | RowReader, group_size: int, shape: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> int32 values in [0, 15] (N, K) and bfloat16 scales_and_zeros (K / g, N, 2).

    Per group of g input columns: scale = (max - min) / 15, zero = min + 8 * scale, so that
    w ~ (q - 8) * scale + zero (the convention of `_weight_int4pack_mm_for_cpu`, as in gpt-fast)."""
    read, n, k = _rows(w, shape)
    if k % group_size:
        raise ValueError(f"in_features {k} is not a multiple of the int4 group size {group_size}")
    q = torch.empty((n, k), dtype=torch.int32)
    sz = torch.empty((k // group_size, n, 2), dtype=KERNEL_DTYPE)
    for r in range(0, n, _CHUNK_ROWS):
        chunk = read(r, min(r + _CHUNK_ROWS, n)).float()
        rows = chunk.shape[0]
        g = chunk.reshape(rows, k // group_size, group_size)  # (rows, K) -> (rows, groups, g)
        lo, hi = g.amin(dim=2), g.amax(dim=2)
        scale = ((hi - lo).clamp(min=1e-6) / 15.0).to(KERNEL_DTYPE)
        zero = (lo + 8.0 * scale.float()).to(KERNEL_DTYPE)
        s32, z32 = scale.float()[..., None], zero.float()[..., None]
        low = z32 - 8.0 * s32  # the value q = 0 stands for, computed from the rounded qparams
        q[r : r + rows] = torch.round((g - low) / s32).clamp_(0, 15).to(torch.int32).reshape(rows, k)
        sz[:, r : r + rows, 0] = scale.T
        sz[:, r : r + rows, 1] = zero.T
    return q, sz


def dequantize_int4(q: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    n, k = q.shape
    s = scales_and_zeros[..., 0].float().T[..., None]  # (K/g, N) -> (N, K/g, 1)
    z = scales_and_zeros[..., 1].float().T[..., None]
    return ((q.float().reshape(n, k // group_size, group_size) - 8.0) * s + z).reshape(n, k)


def _pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int32 (N, K) in [0, 15] -> the packed weight of the int4 kernel of q's device."""
    if q.device.type == "cuda":
        return _pack_int4_cuda(q)
    return _pack_int4_cpu(q)


def cuda_inner_k_tiles(in_features: int) -> int:
    """The CUDA int4 kernel's K tiling (8 as gpt-fast when K allows; K must be a multiple of 16 * tiles)."""
    return next(t for t in (8, 4, 2) if in_features % (16 * t) == 0)


def int4_nibbles(q: torch.Tensor) -> torch.Tensor:
    """int32 (N, K) in [0, 15] -> uint8 (N, K / 2): column 2j in the high nibble, 2j + 1 in the low one (the
    input layout of `_convert_weight_to_int4pack`, as in PyTorch's own int4 tests)."""
    return (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)


def _pack_int4_cuda(q: torch.Tensor) -> torch.Tensor:
    """-> int32 (N / 8, K / (16 * tiles), 32, tiles / 2), the CUDA kernel's tiled layout."""
    return torch.ops.aten._convert_weight_to_int4pack(
        int4_nibbles(q).contiguous(), cuda_inner_k_tiles(q.shape[1])
    )


def _pack_int4_cpu(q: torch.Tensor) -> torch.Tensor:
    """int32 (N, K) in [0, 15] -> the CPU kernel's packed uint8 (N, K / 2), in blocks of rows."""
    n = q.shape[0]
    if n % 64 == 0:  # the CPU packing is local to blocks of rows: pack in chunks to bound memory
        step = 64 * max(1, _CHUNK_ROWS // 64)
        return torch.cat(
            [
                torch.ops.aten._convert_weight_to_int4pack_for_cpu(q[r : r + step].contiguous(), 1)
                for r in range(0, n, step)
            ]
        )
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)


# ---- quantized linear modules ---------------------------------------------------------------------


class _QuantizedLinear(nn.Module):
    """Common part: shapes, bias, the activation cast around the kernel, and a `weight` descriptor.

    `weight` is a tensor on the meta device with the original shape and dtype, so code that only reads
    `module.weight.dtype` / `.shape` (e.g. `Pixtral.dtype`) keeps working; `dequantize()` gives values."""

    def __init__(
        self, in_features: int, out_features: int, dtype: torch.dtype, bias: torch.Tensor | None
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.orig_dtype = in_features, out_features, dtype
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(dtype), requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        return torch.empty((self.out_features, self.in_features), dtype=self.orig_dtype, device="meta")

    def _kernel(self, x: torch.Tensor) -> torch.Tensor:  # (M, K) bfloat16 -> (M, N) bfloat16
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(KERNEL_DTYPE)  # (..., K) -> (M, K)
        y = self._kernel(x2).reshape(*lead, self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def weight_bytes(self) -> int:
        """Bytes read per forward call (quantized weight + its scales), for bandwidth figures."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


def int8_linear_unpacked(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(M, K) activations, int8 (N, K), (N,) scales -> (M, N): the weight cast to x's dtype inside the
    matmul and the per-row scale applied after (gpt-fast's WeightOnlyInt8Linear); the CUDA path."""
    return F.linear(x, q.to(x.dtype)) * scales.to(x.dtype)


class Int8Linear(_QuantizedLinear):
    def __init__(
        self,
        q: torch.Tensor,
        scales: torch.Tensor,
        dtype: torch.dtype,
        bias: torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(q.shape[1], q.shape[0], dtype, bias)
        device = device or q.device
        self.register_buffer("weight_int8", q.to(device).contiguous())  # (N, K) int8
        self.register_buffer("scales", scales.to(device, KERNEL_DTYPE).contiguous())  # (N,)
        if self.bias is not None:
            self.bias.data = self.bias.data.to(device)
        self.kernel = "aten"  # "onednn" after use_onednn() (engine/cpu_kernels.py)

    def use_onednn(self) -> None:
        """Move the weight into oneDNN's packed int8 layout (VNNI/AMX) and multiply from then on with int8
        activations (see `_onednn`; engine/cpu_kernels.py). The plain int8 buffer is dropped (the packed one
        holds the same bytes); `dequantize()` unpacks it."""
        if self.kernel == "onednn":
            return
        self._nbytes = self.weight_bytes()
        hint = [PACK_BATCH_HINT, self.in_features]  # the input shape oneDNN picks its layout for
        self._packed = torch.ops.onednn.qlinear_prepack(self.weight_int8, hint)  # (N, K) -> opaque
        self._w_scales = self.scales.float()  # (N,): oneDNN's per-channel weight scales
        self._w_zeros = torch.zeros(self.out_features, dtype=torch.int64, device=self.scales.device)
        self.weight_int8 = None
        self.kernel = "onednn"

    def _onednn(self, x: torch.Tensor) -> torch.Tensor:
        """(M, K) float -> (M, N) float32, int8 x int8 products with int32 sums, to the weight-only result.

        One int8 row per activation row loses ~1% per element (what llama.cpp's Q8_0 accepts); here each row
        is split into two int8 rows: q1 = round(x / s1), s1 = max|x| / 127, and q2 = round((x - q1 s1) / s2),
        s2 = s1 / 254 (|x - q1 s1| <= s1 / 2), so x = q1 s1 + q2 s2 to 1 part in ~64,000 of max|x|. Both
        rows go through one call (2M rows: the weight is still read once, the cost of a GEMV);
        y = (q1 W^T) s1 + (q2 W^T) s2, with oneDNN applying the weight's per-channel scales."""
        x = x.float()
        m = x.shape[0]
        amax = x.abs().amax(dim=1, keepdim=True).clamp_(min=1e-30)  # (M, 1); s1 = amax / 127
        y = x * (127.0 / amax)  # x / s1, |y| <= 127
        q1 = torch.round(y)
        q2 = y.sub_(q1).mul_(254.0).round_()  # (x - q1 s1) / s2 with s2 = s1 / 254: |q2| <= 127
        q = torch.cat([q1, q2]).to(torch.int8)  # (2M, K)
        out = torch.ops.onednn.qlinear_pointwise(
            q,
            1.0,
            0,
            self._packed,
            self._w_scales,
            self._w_zeros,
            None,
            1.0,
            0,
            torch.float32,
            "none",
            [],
            "",
        )  # (2M, N)
        return out[:m].add_(out[m:], alpha=1.0 / 254.0).mul_(amax / 127.0)  # (q1 + q2 / 254) W^T s1

    @classmethod
    def from_weight(
        cls,
        w: torch.Tensor | RowReader,
        bias: torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
        shape: tuple[int, int] | None = None,
        device: torch.device | str | None = None,
    ) -> Int8Linear:
        q, s = quantize_int8(w, shape)
        return cls(q, s, dtype or _dtype_of(w), bias, device)

    def _kernel(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cuda":  # no packed int8 kernel on CUDA
            return int8_linear_unpacked(x, self.weight_int8, self.scales)
        return torch.ops.aten._weight_int8pack_mm(x, self.weight_int8, self.scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "onednn":  # every batch size: int8 x int8 with VNNI/AMX
            lead = x.shape[:-1]
            y = self._onednn(x.reshape(-1, self.in_features)).reshape(*lead, self.out_features).to(x.dtype)
            return y if self.bias is None else y + self.bias
        if x.device.type == "cuda" or x.numel() // self.in_features < PREFILL_ROWS:
            return super().forward(x)  # decode: the packed GEMV kernel, bandwidth-bound
        # prefill: the packed kernel runs at ~half of float32 GEMM here; dequantize a block of rows at a
        # time to float32 and use the GEMM (the block costs far less than the matmul it feeds)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).float()  # (..., K) -> (M, K)
        step = max(1, _PREFILL_BLOCK // self.in_features)
        outs = []
        for a in range(0, self.out_features, step):
            w = self.weight_int8[a : a + step].float()  # (rows, K)
            outs.append((x2 @ w.T).mul_(self.scales[a : a + step].float()))  # per-row scale after the GEMM
        y = torch.cat(outs, dim=1).reshape(*lead, self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias

    @classmethod
    def stacked(cls, parts: Sequence[Int8Linear]) -> Int8Linear | None:
        """One layer over the stacked output rows of `parts` (same input; engine/fused_projections.py); None
        when they cannot be stacked (packed for oneDNN already, or with biases)."""
        if any(p.kernel != "aten" or p.bias is not None for p in parts):
            return None
        q = torch.cat([p.weight_int8 for p in parts])  # (sum N, K)
        return cls(q, torch.cat([p.scales for p in parts]), parts[0].orig_dtype)

    def dequantize(self) -> torch.Tensor:
        q = self._packed.to_dense().T if self.kernel == "onednn" else self.weight_int8  # (N, K)
        return dequantize_int8(q, self.scales)

    def weight_bytes(self) -> int:
        return self._nbytes if self.kernel == "onednn" else super().weight_bytes()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", int8 per-channel, kernel {self.kernel}"


class Int4Linear(_QuantizedLinear):
    def __init__(
        self,
        q: torch.Tensor,
        scales_and_zeros: torch.Tensor,
        group_size: int,
        dtype: torch.dtype,
        bias: torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(q.shape[1], q.shape[0], dtype, bias)
        device = torch.device(device or q.device)
        self.group_size = group_size
        self.packed_for = device.type  # the packed layout is the kernel's of this device type
        # CPU: (N, K / 2) uint8; CUDA: (N / 8, K / (16 * tiles), 32, tiles / 2) int32
        self.register_buffer("weight_int4pack", _pack_int4(q.to(device)))
        self.register_buffer(
            "scales_and_zeros", scales_and_zeros.to(device, KERNEL_DTYPE).contiguous()
        )  # (K/g, N, 2)
        if self.bias is not None:
            self.bias.data = self.bias.data.to(device)

    @classmethod
    def from_weight(
        cls,
        w: torch.Tensor | RowReader,
        group_size: int = 128,
        bias: torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
        shape: tuple[int, int] | None = None,
        device: torch.device | str | None = None,
    ) -> Int4Linear:
        q, sz = quantize_int4(w, group_size, shape)
        return cls(q, sz, group_size, dtype or _dtype_of(w), bias, device)

    def _kernel(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != self.packed_for:
            raise RuntimeError(
                f"int4 weights packed for {self.packed_for} cannot run on {x.device.type}: the kernels' layouts "
                "differ; quantize on the device the model runs on (Engine.load(device=..., quantize=...))"
            )
        if self.packed_for == "cuda":
            return torch.ops.aten._weight_int4pack_mm(
                x, self.weight_int4pack, self.group_size, self.scales_and_zeros
            )
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            x, self.weight_int4pack, self.group_size, self.scales_and_zeros
        )

    @classmethod
    def stacked(cls, parts: Sequence[Int4Linear]) -> Int4Linear | None:
        """One layer over the stacked output rows of `parts` (engine/fused_projections.py), without repacking:
        the CPU packing is local to blocks of 64 rows, so parts stack by concatenation when every part but the
        last has 64k rows. None for other parts (CUDA's tiled layout is not stacked here: not verified on a
        GPU)."""
        first = parts[0]
        if any(p.out_features % 64 for p in parts[:-1]) or any(
            p.packed_for != "cpu" or p.bias is not None or p.group_size != first.group_size for p in parts
        ):
            return None
        out = cls.__new__(cls)
        _QuantizedLinear.__init__(
            out, first.in_features, sum(p.out_features for p in parts), first.orig_dtype, None
        )
        out.group_size, out.packed_for = first.group_size, "cpu"
        out.register_buffer("weight_int4pack", torch.cat([p.weight_int4pack for p in parts]))
        out.register_buffer(
            "scales_and_zeros", torch.cat([p.scales_and_zeros for p in parts], dim=1)
        )  # (K/g, sum N, 2)
        return out

    def dequantize(self) -> torch.Tensor:
        """The weight the kernel multiplies by, recovered by running the kernel on the identity."""
        eye = torch.eye(self.in_features, dtype=KERNEL_DTYPE, device=self.scales_and_zeros.device)
        return self._kernel(eye).float().T.contiguous()  # (K, N) -> (N, K)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", int4 group {self.group_size}"


def can_quantize(
    mode: str, out_features: int, in_features: int, group_size: int = 128, device_type: str = "cpu"
) -> bool:
    """int4 needs in_features % group_size == 0 and out_features % 16 == 0 (the CPU packing); on CUDA
    out_features % 8 == 0 and in_features % 32 == 0 (the tiled packing); int8 anything."""
    if mode != "int4":
        return True
    if device_type == "cuda":
        return in_features % group_size == 0 and out_features % 8 == 0 and in_features % 32 == 0
    return in_features % group_size == 0 and out_features % 16 == 0


def _dtype_of(w: torch.Tensor | RowReader) -> torch.dtype:
    if isinstance(w, torch.Tensor):
        return w.dtype
    raise ValueError("give the activation dtype when the weight is a row reader")


def quantized_linear(
    weight: torch.Tensor | RowReader,
    mode: str,
    group_size: int = 128,
    bias: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    shape: tuple[int, int] | None = None,
    device: torch.device | str | None = None,
) -> _QuantizedLinear:
    """A quantized replacement for a linear layer with this (N, K) weight (a tensor, or a row reader with
    its shape). `dtype`: the activation dtype of the surrounding model (default: the weight's); `device`:
    where it runs (default: the weight's; the CPU for a row reader), packed for that device's kernel."""
    _check_mode(mode, group_size)
    if device is None and isinstance(weight, torch.Tensor):
        device = weight.device
    if mode == "int8":
        return Int8Linear.from_weight(weight, bias, dtype, shape, device)
    return Int4Linear.from_weight(weight, group_size, bias, dtype, shape, device)


# ---- whole-model transforms -----------------------------------------------------------------------


@dataclass
class QuantizationSummary:
    mode: str
    group_size: int
    quantized: list[str]  # module names replaced
    skipped: list[str]  # targets whose shape the kernel cannot take (left in full precision)
    weight_bytes: int  # bytes of the quantized weights and their scales

    def __str__(self) -> str:
        extra = f" (group {self.group_size})" if self.mode == "int4" else ""
        s = f"{self.mode}{extra}: {len(self.quantized)} linear layers, {self.weight_bytes / 1e9:.3f} GB"
        return s + (f"; kept in full precision (shape): {', '.join(self.skipped)}" if self.skipped else "")


@torch.no_grad()
def quantize_model_(
    model: Pixtral, mode: str = "int8", group_size: int = 128, include_output: bool = True
) -> QuantizationSummary:
    """Replace the decoder's linear layers (and the output head) by quantized ones, in place."""
    _check_mode(mode, group_size)
    done, skipped, nbytes = [], [], 0
    for name, module in list(model.named_modules()):
        if not (isinstance(module, nn.Linear) and is_target(name, include_output)):
            continue
        device = module.weight.device
        if not can_quantize(mode, module.out_features, module.in_features, group_size, device.type):
            skipped.append(name)
            continue
        weight = module.weight.detach()
        q = quantized_linear(weight, mode, group_size, module.bias, weight.dtype, device=device)
        set_submodule(model, name, q)
        done.append(name)
        nbytes += q.weight_bytes()
    return QuantizationSummary(mode, group_size, done, skipped, nbytes)


class QuantizePlan(LoadPlan):
    """Quantization as the loader's per-tensor hook (checkpoint/loader.py): each target linear's weight is
    quantized as it is read, `_CHUNK_ROWS` rows at a time straight from its source (any format: the
    checkpoint layer reads the rows, permuting HF q/k heads and scaling FP8 as needed), packed for
    `device`'s kernels; every other tensor is read whole and cast to `dtype`. Only the quantized form of a
    target is ever kept (the 1.3 GB output head of the 12B model is never in memory in bf16)."""

    def __init__(
        self,
        mode: str,
        dtype: str | torch.dtype = "bfloat16",
        group_size: int = 128,
        include_output: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        _check_mode(mode, group_size)
        super().__init__(dtype, device)
        self.mode, self.group_size, self.include_output = mode, group_size, include_output
        self.summary = QuantizationSummary(mode, group_size, [], [], 0)

    def tensor(self, name: str, source: Readable, module: nn.Module) -> torch.Tensor | nn.Module | None:
        module_name, _, leaf = name.rpartition(".")
        if not (
            isinstance(module, nn.Linear) and leaf == "weight" and is_target(module_name, self.include_output)
        ):
            return super().tensor(name, source, module)
        if module.bias is not None:
            raise NotImplementedError(f"{module_name}: quantize-while-loading of a biased linear")
        if not can_quantize(self.mode, *source.shape, self.group_size, self.device.type):
            self.summary.skipped.append(module_name)
            return super().tensor(name, source, module)
        q = quantized_linear(
            source.read_rows, self.mode, self.group_size, None, self.dtype, tuple(source.shape), self.device
        )
        self.summary.quantized.append(module_name)
        self.summary.weight_bytes += q.weight_bytes()
        return q

    def description(self, ckpt: Checkpoint) -> str:
        return f"loading {ckpt.folder.name}, quantizing to {self.mode}"


def load_quantized(
    path: str | Path,
    mode: str = "int8",
    dtype: str | torch.dtype = "bfloat16",
    group_size: int = 128,
    include_output: bool = True,
    device: torch.device | str = "cpu",
) -> tuple[Pixtral, Checkpoint, QuantizationSummary]:
    """Open a checkpoint and build the model tensor by tensor through `QuantizePlan`: target linears are
    quantized as soon as their weight is read (only the quantized form is kept, packed for `device`'s
    kernels and put there); everything else is cast to `dtype` and put on `device`.

    Peak memory: the quantized model plus one unquantized tensor in flight (a target weight: _CHUNK_ROWS
    rows of it). The default dtype is bfloat16 for the unquantized parts: the 12B embedding alone is
    2.7 GB in float32."""
    plan = QuantizePlan(mode, dtype, group_size, include_output, device)
    model, ckpt = load_model(path, plan=plan)
    return model, ckpt, plan.summary


def decoder_bytes_per_token(model: Pixtral) -> int:
    """Bytes of decoder weights read to decode one token: every decoder linear (quantized or not), the
    output head, the norms and one embedding row. The basis of the effective-bandwidth figures."""
    total = 0
    for name, module in model.named_modules():
        if name.startswith(("vision_encoder", "vision_language_adapter")):
            continue
        if hasattr(module, "weight_bytes"):  # quantized or packed (engine/cpu_kernels.py) linears
            total += module.weight_bytes()
        elif isinstance(module, (nn.Linear, RMSNorm)):
            total += sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))
    emb = model.tok_embeddings.weight
    return total + emb.shape[1] * emb.element_size()


# ---- quality measurement --------------------------------------------------------------------------


@dataclass
class QualityReport:
    logit_cosine_mean: float  # cosine similarity of the full logit vectors, averaged over positions
    logit_cosine_min: float
    top1_agreement: float  # teacher-forced: share of positions whose argmax matches the reference's
    greedy_agreement: float  # share of free-running greedy tokens identical to the reference's
    greedy_prefix: float  # share of the greedy continuation generated before the first divergence
    max_abs_logit_diff: float
    positions: int

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 5) if isinstance(v, float) else v for k, v in self.__dict__.items()}


@torch.inference_mode()
def _greedy(model: nn.Module, prompt: torch.Tensor, n: int) -> list[int]:
    """Greedy continuation without a KV cache (short sequences only: quality checks, not speed)."""
    ids = prompt.clone()  # (1, T)
    out = []
    for _ in range(n):
        nxt = model(ids, last_only=True)[0, -1].argmax()
        out.append(int(nxt))
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return out


@torch.inference_mode()
def compare_models(
    reference: nn.Module, candidate: nn.Module, prompts: Sequence[torch.Tensor], new_tokens: int = 16
) -> QualityReport:
    """Quality of `candidate` against `reference` on text prompts ((1, T) id tensors).

    For each prompt the reference's greedy continuation is generated; both models are then run on prompt +
    continuation (teacher forcing) and their logits compared at every position; the candidate also
    generates its own greedy continuation, compared token by token."""
    cos, top1, greedy, prefix, n_pos, max_diff = [], [], [], [], 0, 0.0
    for prompt in prompts:
        ref_tokens = _greedy(reference, prompt, new_tokens)
        seq = torch.cat([prompt, torch.tensor([ref_tokens])], dim=1)
        a = reference(seq)[0].float()  # (T, vocab)
        b = candidate(seq)[0].float()
        cos += F.cosine_similarity(a, b, dim=-1).tolist()
        top1 += (a.argmax(-1) == b.argmax(-1)).tolist()
        max_diff = max(max_diff, float((a - b).abs().max()))
        n_pos += a.shape[0]
        cand_tokens = _greedy(candidate, prompt, new_tokens)
        same = [x == y for x, y in zip(ref_tokens, cand_tokens, strict=True)]
        greedy += same
        prefix.append((same + [False]).index(False) / new_tokens)
    return QualityReport(
        logit_cosine_mean=sum(cos) / len(cos),
        logit_cosine_min=min(cos),
        top1_agreement=sum(top1) / len(top1),
        greedy_agreement=sum(greedy) / len(greedy),
        greedy_prefix=sum(prefix) / len(prefix),
        max_abs_logit_diff=max_diff,
        positions=n_pos,
    )


def random_prompts(
    vocab_size: int, n: int = 4, length: int = 12, seed: int = 0, low: int = 1000
) -> list[torch.Tensor]:
    """Random text-token prompts (ids >= `low`, above the control tokens), each (1, length)."""
    gen = torch.Generator().manual_seed(seed)
    low = min(low, vocab_size - 1)
    return [torch.randint(low, vocab_size, (1, length), generator=gen) for _ in range(n)]
