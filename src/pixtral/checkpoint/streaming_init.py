"""Random checkpoints of any size written straight to disk (`pixtral init --preset 12b`).

`create_random_checkpoint` builds the model in memory; the 12B shape does not fit in 24 GiB in float32
(and barely in bfloat16). Here the safetensors file is written by hand, streaming: the header is computed
from the shapes alone (8-byte little-endian length, JSON {name: {dtype, shape, data_offsets}}, padded with
spaces to 8 bytes), then every tensor's bytes are written in chunks. Memory stays at one chunk.

Random fill: drawing 12.7 B normal numbers on 2 cores would take minutes, so a block of `_BLOCK` normal
numbers (a prime count, drawn once per seed) is cut into rotations: chunk i of tensor t starts at
(offset_t + i * stride_t) mod _BLOCK, with offset_t and stride_t drawn per tensor. Rows of a matrix
therefore differ (the period is prime, rows are not), the values are N(0, std), and the write is
disk-bound. Norm weights are 1, as in `init_random_weights_`; biases are N(0, std).
The weights are noise, not a trained model; the file exists to exercise memory and speed at full size.
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import torch

from pixtral.checkpoint.formats import HF_CONFIG, HF_WEIGHTS, NATIVE_PARAMS, NATIVE_WEIGHTS
from pixtral.checkpoint.hf_names import native_to_hf_name
from pixtral.checkpoint.loader import expected_shapes
from pixtral.checkpoint.progress import ByteProgress
from pixtral.checkpoint.random_init import write_untrained_marker, written_atomically
from pixtral.checkpoint.safetensors_file import (  # noqa: F401 (safetensors_header: tests import it from here)
    safetensors_header,
    write_safetensors_streaming,
)
from pixtral.config import PixtralConfig

_ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}  # what the fill supports
_BLOCK = 1_048_573  # prime number of random values tiled into every tensor
_CHUNK = _BLOCK  # elements written per write() call (2 MiB in bfloat16)


class _RandomTiles:
    """Chunks of N(0, std) values for any tensor, cut from one random block (see the module docstring)."""

    def __init__(self, seed: int, std: float, dtype: torch.dtype) -> None:
        gen = torch.Generator().manual_seed(seed)
        block = (torch.randn(_BLOCK, generator=gen) * std).to(dtype)
        self.ring = torch.cat([block, block])  # any window [o, o + _BLOCK) is contiguous
        self.ones = torch.ones(_CHUNK, dtype=dtype)
        self.seed = seed

    def __call__(self, name: str, shape: tuple[int, ...], dtype: torch.dtype):
        n = _numel(shape)
        if name.endswith("norm.weight") or name.endswith("ln_pre.weight"):
            source, offset, stride = self.ones, 0, 0
        else:
            h = zlib.crc32(f"{self.seed}:{name}".encode())
            source, offset, stride = self.ring, h % _BLOCK, 1 + (h // _BLOCK) % (_BLOCK - 1)
        done, i = 0, 0
        while done < n:
            take = min(_CHUNK, n - done)
            start = (offset + i * stride) % _BLOCK if stride else 0
            yield source[start : start + take].view(torch.uint8).numpy().data
            done += take
            i += 1


def write_random_checkpoint_streaming(
    folder: str | Path,
    config: PixtralConfig,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    fmt: str = "native",
    std: float = 0.02,
) -> Path:
    """A random-weight checkpoint of `config`'s exact shapes, written tensor by tensor (memory: one 4 MiB
    block). Atomic like `create_random_checkpoint`: written beside the target, then renamed.

    fmt "native" writes params.json + consolidated.safetensors; "hf" writes config.json + one
    model.safetensors with HF names (the q/k rows are random either way, so no permutation is applied)."""
    if dtype not in _ST_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(map(str, _ST_DTYPES))}")
    if fmt not in ("native", "hf"):
        raise ValueError(f"unknown format {fmt!r}; choose native or hf")
    folder = Path(folder)
    shapes = expected_shapes(config)
    nbytes = sum(_numel(s) for s in shapes.values()) * torch.empty((), dtype=dtype).element_size()
    with written_atomically(folder) as tmp:
        free = shutil.disk_usage(tmp).free
        if nbytes > free:
            raise OSError(f"{folder.parent}: {nbytes / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free")
        rename = (lambda n: n) if fmt == "native" else native_to_hf_name
        entries = [(rename(name), shape, dtype) for name, shape in shapes.items()]
        tiles = _RandomTiles(seed, std, dtype)
        back = {rename(n): n for n in shapes}  # chunks are chosen by native name: same data in both formats
        weights = NATIVE_WEIGHTS if fmt == "native" else HF_WEIGHTS
        with ByteProgress("writing weights", nbytes) as bar:
            write_safetensors_streaming(
                tmp / weights, entries, lambda n, s, d: tiles(back[n], s, d), on_bytes=bar.advance
            )
        if fmt == "native":
            (tmp / NATIVE_PARAMS).write_text(json.dumps(config.to_params_json(), indent=2) + "\n")
        else:
            (tmp / HF_CONFIG).write_text(json.dumps(config.to_hf_config(), indent=2) + "\n")
        write_untrained_marker(tmp, f"Random weights (seed {seed}, tiled from one random block)")
    return folder


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
