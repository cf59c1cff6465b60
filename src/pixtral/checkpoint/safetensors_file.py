"""A validating, memory-frugal reader of .safetensors files.

The whole header is checked before any tensor is read (dtype, shape, offsets inside the file), so a truncated
or corrupt file fails at once with its name and the tensor at fault, never half-way through a load. Each tensor
is read with plain reads into its own buffer, so the file's pages are never mapped into the process: loading
costs the final weights plus, when casting, one tensor in flight. Writing is streamed too: the header is
computed from the shapes, then each tensor's bytes are written in turn (no second copy of the weights in
memory), with a callback per chunk for progress bars.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from pixtral.errors import CheckpointError

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,  # FP8 checkpoints (checkpoint/fp8.py)
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_MAX_HEADER = 256 * 1024 * 1024

Entry = tuple[str, tuple[int, ...], torch.dtype]  # (name, shape, dtype) of a tensor to write


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]


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
        if end - start != math.prod(shape) * _DTYPES[dtype].itemsize or start < base:
            raise CheckpointError(f"{where}: data_offsets do not match dtype {dtype} and shape {shape}")
        if end > size:
            raise CheckpointError(f"{where}: file is truncated (tensor ends at byte {end}, file has {size})")
        return TensorInfo(dtype, tuple(shape), start, end)

    def read(self, name: str) -> torch.Tensor:
        """A fresh tensor (its own memory) with the stored dtype and shape.

        The bytes are read straight into the tensor's buffer with readinto(): the file's pages stay in the
        page cache and never count toward this process's RSS."""
        info = self.tensors[name]
        return self.read_rows(name, 0, info.shape[0]) if info.shape else self._read_into(name, info.start, ())

    def read_rows(self, name: str, a: int, b: int) -> torch.Tensor:
        """Rows [a, b) of the tensor's first dimension (a contiguous byte range: one plain read)."""
        info = self.tensors[name]
        n = info.shape[0]
        if not 0 <= a <= b <= n:
            raise IndexError(f"{self.path}: tensor '{name}' has {n} rows; asked for rows [{a}, {b})")
        row_bytes = (info.end - info.start) // n if n else 0
        return self._read_into(name, info.start + a * row_bytes, (b - a, *info.shape[1:]))

    def _read_into(self, name: str, start: int, shape: tuple[int, ...]) -> torch.Tensor:
        out = torch.empty(shape, dtype=self.tensors[name].torch_dtype)
        if out.numel() == 0:
            return out
        buffer = out.view(-1).view(torch.uint8).numpy()
        with self.path.open("rb", buffering=0) as f:
            f.seek(start)
            view, done = memoryview(buffer), 0
            while done < len(buffer):
                n = f.readinto(view[done:])
                if not n:
                    raise CheckpointError(
                        f"{self.path}: tensor '{name}': file ended early (truncated while reading)"
                    )
                done += n
        return out


# ---- write --------------------------------------------------------------------------------------


def safetensors_header(entries: list[Entry], metadata: dict[str, str] | None = None) -> bytes:
    """The 8-byte length + JSON header of a safetensors file whose tensors follow in this order."""
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, shape, dtype in entries:
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {
            "dtype": _DTYPE_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors_streaming(
    path: str | Path,
    entries: list[Entry],
    chunks: Callable[[str, tuple[int, ...], torch.dtype], Iterable],
    on_bytes: Callable[[int], None] | None = None,
    metadata: dict[str, str] | None = None,
) -> int:
    """Write a safetensors file: header from `entries` (and `metadata`), then for each entry the byte chunks yielded by
    `chunks(name, shape, dtype)` (each a bytes-like object; together exactly the tensor's size), calling
    `on_bytes(n)` after each chunk. Returns the file size."""
    head = safetensors_header(entries, metadata)
    with open(path, "wb") as f:
        f.write(head)
        for name, shape, dtype in entries:
            want, got = math.prod(shape) * dtype.itemsize, 0
            for chunk in chunks(name, shape, dtype):
                n = f.write(chunk)
                got += n
                if on_bytes is not None:
                    on_bytes(n)
            if got != want:
                raise RuntimeError(f"{path}: tensor {name!r} wrote {got} bytes, expected {want}")
        return f.tell()


def write_tensors(
    path: str | Path,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    """Write in-memory tensors (any layout; each made contiguous in turn) as a safetensors file."""
    entries = [(name, tuple(t.shape), t.dtype) for name, t in tensors.items()]

    def chunks(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Iterable:
        t = tensors[name].detach().cpu().contiguous()
        return [t.view(-1).view(torch.uint8).numpy().data] if t.numel() else []

    return write_safetensors_streaming(path, entries, chunks, on_bytes, metadata)
