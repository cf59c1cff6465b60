"""The one entry point for checkpoints: open a folder (or hub id) in either format, check every tensor
against the config before reading any, load into a model with bounded memory, save, convert.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from pixtral.checkpoint.formats import (
    TensorSource,
    copy_tokenizer_files,
    detect_format,
    read_config,
    read_sources,
    write_checkpoint,
)
from pixtral.checkpoint.hub import resolve_model_path
from pixtral.checkpoint.progress import track
from pixtral.config import PixtralConfig
from pixtral.errors import CheckpointError
from pixtral.model.pixtral import Pixtral

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Checkpoint:
    folder: Path
    format: str  # "native" | "hf"
    config: PixtralConfig
    sources: dict[str, TensorSource]  # native name -> where to read it

    def tensors(self, progress: str | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(native name, tensor in native layout and stored dtype), one at a time; with `progress`, behind a
        progress bar of that description."""
        for name, src in self.tracked_sources(progress) if progress else self.sources.items():
            yield name, src.read()

    def tracked_sources(self, description: str) -> Iterator[tuple[str, TensorSource]]:
        """The sources in order behind a byte progress bar (progress.py) that advances by each tensor's
        stored size as the caller moves on to the next: a loop over it shows how far a load has come."""
        sizes = [src.nbytes for src in self.sources.values()]
        return track(self.sources.items(), description, sizes, sum(sizes))

    @property
    def nbytes(self) -> int:
        """Bytes of all tensors as stored."""
        return sum(src.nbytes for src in self.sources.values())

    @property
    def stored_dtype(self) -> torch.dtype:
        dtypes = {src.dtype for src in self.sources.values()}
        return dtypes.pop() if len(dtypes) == 1 else torch.float32


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open and fully validate a checkpoint: config, tensor names and shapes; no weights are read yet."""
    folder = resolve_model_path(path)
    fmt = detect_format(folder)
    config = read_config(folder, fmt)
    sources = read_sources(folder, fmt, config)
    _check_against(config, sources, folder)
    return Checkpoint(folder, fmt, config, sources)


def expected_shapes(config: PixtralConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of this config holds (a tied output matrix is not stored)."""
    with torch.device("meta"):
        model = Pixtral(config)
    skip = Pixtral.TIED_NAMES if config.text.tied_embeddings else ()
    return {name: tuple(p.shape) for name, p in model.state_dict().items() if name not in skip}


def _check_against(config: PixtralConfig, sources: dict[str, TensorSource], folder: Path) -> None:
    expected = expected_shapes(config)
    missing = [n for n in expected if n not in sources]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"{folder}: missing tensor(s) {', '.join(missing[:3])}{more}")
    for name, src in sources.items():
        if name not in expected:
            raise CheckpointError(f"{src.file.path}: unexpected tensor '{src.stored_name}' for this config")
        if src.shape != expected[name]:
            raise CheckpointError(
                f"{src.file.path}: tensor '{src.stored_name}' has shape {list(src.shape)} but the config "
                f"implies {list(expected[name])} (does the config match the weights?)"
            )
        if not src.dtype.is_floating_point:
            raise CheckpointError(
                f"{src.file.path}: tensor '{src.stored_name}' has non-float dtype {src.dtype}"
            )


def load_model(
    path: str | Path, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu"
) -> tuple[Pixtral, Checkpoint]:
    """Build the model on the meta device, then read, permute and cast one tensor at a time.

    Peak memory is the final weights plus one tensor in flight."""
    ckpt = open_checkpoint(path)
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    with torch.device("meta"):
        model = Pixtral(ckpt.config)
    state = {}
    for name, tensor in ckpt.tensors(progress=f"loading {ckpt.folder.name}"):
        state[name] = tensor.to(device=device, dtype=torch_dtype)
        del tensor
    load_state(model, state)
    return model.eval(), ckpt


def load_state(model: Pixtral, state: dict[str, torch.Tensor]) -> None:
    """load_state_dict(strict, assign) that accepts the absence of a tied output matrix and re-ties it."""
    tied = Pixtral.TIED_NAMES if model.config.text.tied_embeddings else ()
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [n for n in missing if n not in tied]
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_embeddings_()


def save_model(model: Pixtral, folder: str | Path, fmt: str = "native") -> None:
    state = model.state_dict()
    write_checkpoint(Path(folder), fmt, model.config, ((n, t.detach()) for n, t in state.items()))


def convert(src: str | Path, dst: str | Path, to: str) -> Checkpoint:
    """Rewrite a checkpoint in another format, bit-exactly (no dtype change); tokenizer files come along."""
    ckpt = open_checkpoint(src)
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise CheckpointError(f"{dst}: destination exists and is not empty")
    write_checkpoint(dst, to, ckpt.config, ckpt.tensors(progress=f"reading {ckpt.folder.name}"))
    copy_tokenizer_files(ckpt.folder, dst)
    return ckpt
