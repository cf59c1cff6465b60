"""The one entry point for checkpoints: open a folder (or hub id) in either format, check every tensor
against the config before reading any, load into a model with bounded memory, save, convert.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

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
from pixtral.checkpoint.source import TensorSlice
from pixtral.config import PixtralConfig
from pixtral.errors import CheckpointError
from pixtral.model.pixtral import Pixtral

Readable = TensorSource | TensorSlice  # what a plan reads: read(), read_rows(a, b), shape, dtype
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


class LoadPlan:
    """What `load_model` makes of a checkpoint: the one loader's per-tensor transform hook.

    `build` makes the model to fill, on the meta device (no memory); `tensor` decides, per native tensor
    name, what to read from its source (the whole tensor, or a block: `source.slice(rows=, cols=)`) and what
    to make of it: a tensor (the parameter), a module (replaces the module that owns the parameter, e.g. a
    quantized linear), or SKIP (left unloaded: a part this process never runs). `finish` runs once every
    tensor is in. This default reads each tensor whole and casts it to `dtype` on `device`; quantization
    (engine/quantize.py) and tensor parallelism (parallel/tensor_parallel.py) are plans too."""

    SKIP = None

    def __init__(self, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu") -> None:
        self.dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
        self.device = torch.device(device)

    def build(self, config: PixtralConfig) -> Pixtral:
        with torch.device("meta"):
            return Pixtral(config)

    def tensor(self, name: str, source: Readable, module: nn.Module) -> torch.Tensor | nn.Module | None:
        return source.read().to(self.device, self.dtype)

    def finish(self, model: Pixtral) -> Pixtral:
        return model

    def description(self, ckpt: Checkpoint) -> str:
        return f"loading {ckpt.folder.name}"


def load_model(
    path: str | Path,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    plan: LoadPlan | None = None,
) -> tuple[Pixtral, Checkpoint]:
    """Build the model on the meta device, then fill it one tensor at a time as `plan` says (default: read,
    permute and cast each tensor; `dtype` and `device` are the default plan's).

    Peak memory is the final weights plus one tensor (or the block the plan reads) in flight."""
    ckpt = open_checkpoint(path)
    plan = plan or LoadPlan(dtype, device)
    model = plan.build(ckpt.config)
    skipped = set()
    for name, src in ckpt.tracked_sources(plan.description(ckpt)):
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        made = plan.tensor(name, src, module)
        if made is LoadPlan.SKIP:
            skipped.add(name)
        elif isinstance(made, nn.Module):
            set_submodule(model, module_name, made)
        else:  # a parameter as the model declares it (trainable: training loads through here too)
            module._parameters[leaf] = nn.Parameter(
                made, requires_grad=module._parameters[leaf].requires_grad
            )
        del made
    model.tie_embeddings_()  # a tied output matrix is not in the checkpoint: it is the embedding matrix
    left = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    left = [n for n in left if n not in skipped]
    if left:
        raise RuntimeError(f"not loaded from the checkpoint: {', '.join(left[:5])}")
    return plan.finish(model.eval()), ckpt


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` in place of the submodule called `name` ("layers.0.attention.wo")."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


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
