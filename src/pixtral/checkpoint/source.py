"""Where one tensor of a checkpoint lies, and how to read it, or a block of it, in the native convention.

A `TensorSource` is a tensor in a safetensors file plus what reading it in the native convention takes: the
q/k row permutation of Hugging Face checkpoints (docs/architecture.md, "Checkpoint formats") and the
per-tensor scale of FP8 weights (checkpoint/fp8.py). `read(rows=, cols=)` reads a block of its native
layout without reading the rest when it can:
- rows [a, b) are one contiguous byte range of the file; under the HF q/k permutation (which reorders rows
  within each head only) the whole heads covering [a, b) are read, permuted, then cut;
- columns [c, d) are read in bounded chunks of whole rows, each cut to its columns at once, so memory is the
  block plus one chunk (_CHUNK_BYTES), never the whole tensor.
`slice(rows=, cols=)` is such a block as a lazy source of its own (what a tensor-parallel rank loads), with
`read_rows` for the quantizer, which reads its weights a few rows at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pixtral.checkpoint import fp8
from pixtral.checkpoint.hf_names import half_to_interleaved
from pixtral.checkpoint.safetensors_file import SafetensorsFile

Range = tuple[int, int]  # [start, end)
_CHUNK_BYTES = 64 * 1024**2  # whole rows read at a time for a column block


@dataclass(frozen=True)
class TensorSource:
    file: SafetensorsFile
    stored_name: str
    rope_heads: tuple[int, int] | None = None  # HF q/k: (n_heads, head_dim) of the permutation on read
    scale: TensorSource | None = None  # FP8 weights: their per-tensor scale (checkpoint/fp8.py)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.file.tensors[self.stored_name].shape

    @property
    def dtype(self) -> torch.dtype:
        """The dtype read() returns: the stored one, or float32 for a dequantized FP8 weight."""
        return torch.float32 if self.scale is not None else self.file.tensors[self.stored_name].torch_dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def read(self, rows: Range | None = None, cols: Range | None = None) -> torch.Tensor:
        """The tensor in native layout, or its block rows x cols (2-D tensors; `rows` also cuts 1-D ones)."""
        n = self.shape[0] if self.shape else 0
        a, b = rows or (0, n)
        if self.rope_heads is not None:  # rows permuted within each head: read the heads covering [a, b)
            hd = self.rope_heads[1]
            ha, hb = a // hd * hd, -(-b // hd) * hd
            t = half_to_interleaved(self._stored(ha, hb, cols), (hb - ha) // hd, hd)[a - ha : b - ha]
        elif not self.shape:
            t = self.file.read(self.stored_name)
        else:
            t = self._stored(a, b, cols)
        if self.scale is not None:
            t = fp8.dequantize(t, self.scale.read(), f"{self.file.path}: tensor '{self.stored_name}'")
        return t.contiguous()

    def read_rows(self, a: int, b: int) -> torch.Tensor:
        """Rows [a, b) of the native layout (the quantizer's row reader)."""
        return self.read(rows=(a, b))

    def slice(self, rows: Range | None = None, cols: Range | None = None) -> TensorSlice:
        return TensorSlice(self, rows, cols)

    def _stored(self, a: int, b: int, cols: Range | None) -> torch.Tensor:
        """Rows [a, b) as stored, cut to `cols` chunk by chunk."""
        if cols is None:
            return self.file.read_rows(self.stored_name, a, b)
        if len(self.shape) != 2:
            raise ValueError(f"{self.file.path}: tensor '{self.stored_name}' is not 2-D: no column block")
        c, d = cols
        out = torch.empty((b - a, d - c), dtype=self.file.tensors[self.stored_name].torch_dtype)
        step = max(1, _CHUNK_BYTES // max(1, self.shape[1] * out.element_size()))
        for r in range(a, b, step):
            e = min(b, r + step)
            out[r - a : e - a] = self.file.read_rows(self.stored_name, r, e)[:, c:d]
        return out


@dataclass(frozen=True)
class TensorSlice:
    """The block rows x cols of a source's native layout, read lazily (the same reading interface)."""

    source: TensorSource
    rows: Range | None = None
    cols: Range | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        full = self.source.shape
        n = (self.rows[1] - self.rows[0]) if self.rows else full[0]
        if len(full) == 1:
            return (n,)
        k = (self.cols[1] - self.cols[0]) if self.cols else full[1]
        return (n, k, *full[2:])

    @property
    def dtype(self) -> torch.dtype:
        return self.source.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def read(self) -> torch.Tensor:
        return self.source.read(self.rows, self.cols)

    def read_rows(self, a: int, b: int) -> torch.Tensor:
        """Rows [a, b) of this block."""
        first = self.rows[0] if self.rows else 0
        return self.source.read((first + a, first + b), self.cols)
