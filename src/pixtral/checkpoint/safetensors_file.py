"""A validating, memory-frugal reader of .safetensors files.

The whole header is checked before any tensor is read (dtype, shape, offsets inside the file), so a truncated
or corrupt file fails at once with its name and the tensor at fault, never half-way through a load. Each tensor
is read through its own short-lived memory map and copied out, so the file's pages do not stay resident
beside the loaded weights (peak RSS = final weights + one tensor). Writing uses the `safetensors` library.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pixtral.errors import CheckpointError

_DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    "F64": (torch.float64, np.dtype("<f8")),
    "F32": (torch.float32, np.dtype("<f4")),
    "F16": (torch.float16, np.dtype("<f2")),
    "BF16": (torch.bfloat16, np.dtype("<u2")),  # numpy has no bfloat16: read the bits, view in torch
    "I64": (torch.int64, np.dtype("<i8")),
    "I32": (torch.int32, np.dtype("<i4")),
    "I16": (torch.int16, np.dtype("<i2")),
    "I8": (torch.int8, np.dtype("i1")),
    "U8": (torch.uint8, np.dtype("u1")),
    "BOOL": (torch.bool, np.dtype("?")),
}
_MAX_HEADER = 256 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype][0]


class SafetensorsFile:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: file not found")
        size = self.path.stat().st_size
        with self.path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{self.path}: not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, _MAX_HEADER):
                raise CheckpointError(
                    f"{self.path}: corrupt or truncated header (says {n} bytes, file has {size})"
                )
            raw = f.read(n)
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.path}: corrupt header, not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: corrupt header, expected a JSON object")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        base = 8 + n
        self.tensors: dict[str, TensorInfo] = {}
        for name, entry in header.items():
            self.tensors[name] = self._check_entry(name, entry, base, size)

    def _check_entry(self, name: str, entry: object, base: int, size: int) -> TensorInfo:
        where = f"{self.path}: tensor '{name}'"
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise CheckpointError(f"{where}: corrupt header entry")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPES:
            raise CheckpointError(f"{where}: unsupported dtype {dtype!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise CheckpointError(f"{where}: corrupt shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise CheckpointError(f"{where}: corrupt data_offsets {offsets!r}")
        start, end = base + offsets[0], base + offsets[1]
        if end - start != math.prod(shape) * _DTYPES[dtype][1].itemsize or start < base:
            raise CheckpointError(f"{where}: data_offsets do not match dtype {dtype} and shape {shape}")
        if end > size:
            raise CheckpointError(f"{where}: file is truncated (tensor ends at byte {end}, file has {size})")
        return TensorInfo(dtype, tuple(shape), start, end)

    def read(self, name: str) -> torch.Tensor:
        """A fresh tensor (its own memory) with the stored dtype and shape."""
        info = self.tensors[name]
        torch_dtype, np_dtype = _DTYPES[info.dtype]
        count = math.prod(info.shape)
        if count == 0:
            return torch.empty(info.shape, dtype=torch_dtype)
        mapped = np.memmap(self.path, dtype=np_dtype, mode="r", offset=info.start, shape=(count,))
        try:
            out = torch.from_numpy(np.array(mapped))  # copy out of the map
        finally:
            mapped._mmap.close()  # unmap now, so the file's pages leave this process's RSS
            del mapped
        if info.dtype == "BF16":
            out = out.view(torch.bfloat16)
        return out.reshape(info.shape)
