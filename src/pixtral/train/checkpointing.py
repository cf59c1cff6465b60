"""Training checkpoints and the final export.

A checkpoint is a folder `out_dir/checkpoints/step_00000120/` written by `torch.distributed.checkpoint`
(each rank writes its shards; a run saved with N ranks loads with M) holding the trainable parameters and
the optimizer state, plus `train_state.json` (step, scheduler, config, data statistics) and one RNG file per
rank. Frozen parameters are not saved: they come back from the base model (`model` in the config), so a LoRA
checkpoint holds only the adapters. Writing is atomic: everything goes to `.tmp_step_.../`, which is renamed
once every rank has finished; a run killed mid-write leaves only a `.tmp_` folder that resume ignores.

The export (`out_dir/final/`) is a plain checkpoint in our model format(s), adapters merged, that every
other command loads; a LoRA run also writes `out_dir/final/adapter/` (adapter_config.json + safetensors).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from pixtral.checkpoint.formats import copy_tokenizer_files, write_checkpoint
from pixtral.config import PixtralConfig
from pixtral.errors import CheckpointError
from pixtral.train import distributed as D
from pixtral.train.lora import LoRAConfig, is_lora_name, merge_lora_state_dict, save_adapter

STATE_FILE = "train_state.json"
_STEP_DIR = re.compile(r"^step_(\d{8})$")
_OPTIONS = StateDictOptions(ignore_frozen_params=True)
# Loading puts the trainable subset back into the whole model: the frozen keys are missing by design.
_LOAD_OPTIONS = StateDictOptions(ignore_frozen_params=True, strict=False)


@contextlib.contextmanager
def _single_process_ok() -> Iterator[None]:
    """DCP warns when used without a process group; one process is a supported case here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = checkpoint_dir(out_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    root: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    info: D.DistInfo,
    train_state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Collective: every rank calls it. `step` is the number of optimizer steps done."""
    folder = checkpoint_dir(out_dir)
    final = folder / f"step_{step:08d}"
    tmp = folder / f".tmp_step_{step:08d}"
    if info.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    D.barrier()
    model_sd, optim_sd = get_state_dict(root, optimizer, options=_OPTIONS)
    with _single_process_ok():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    torch.save(_rng_state(), tmp / f"rng_rank{info.rank}.pt")
    D.barrier()
    if info.is_main:
        state = {
            **train_state,
            "step": step,
            "world_size": info.world_size,
            "scheduler": scheduler.state_dict(),
        }
        path = tmp / STATE_FILE
        with path.open("w") as f:
            json.dump(state, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # a checkpoint of the same step from an earlier attempt
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(out_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    D.barrier()
    return final


def load_checkpoint(
    path: str | Path,
    root: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    info: D.DistInfo,
) -> dict[str, Any]:
    """Restore trainable weights, optimizer and scheduler (any world size), and the RNG state when the
    world size is unchanged. Returns train_state.json."""
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"{path}: not a complete training checkpoint (no {STATE_FILE})")
    train_state = json.loads(state_file.read_text())
    model_sd, optim_sd = get_state_dict(root, optimizer, options=_OPTIONS)
    state = {"model": model_sd, "optim": optim_sd}
    with _single_process_ok():
        dcp.load(state, checkpoint_id=str(path))
    keys = set_state_dict(
        root,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optim"],
        options=_LOAD_OPTIONS,
    )
    trainable = {n for n, p in root.named_parameters() if p.requires_grad}
    not_loaded = sorted(trainable.intersection(keys.missing_keys)) + sorted(keys.unexpected_keys)
    if not_loaded:
        raise CheckpointError(f"{path}: does not match the model's trainable tensors ({not_loaded[:3]})")
    scheduler.load_state_dict(train_state["scheduler"])
    rng = path / f"rng_rank{info.rank}.pt"
    if train_state.get("world_size") == info.world_size and rng.is_file():
        _set_rng_state(torch.load(rng, weights_only=False))
    return train_state


def full_state_dict(root: nn.Module, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """Collective: the whole model's state on rank 0 (CPU), native names, adapters still separate."""
    sd = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in sd.items()}


def export_model(
    root: nn.Module,
    folder: str | Path,
    config: PixtralConfig,
    info: D.DistInfo,
    formats: list[str],
    lora: LoRAConfig | None = None,
    tokenizer_dir: Path | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Collective. Writes folder/ (first format), folder/<fmt>/ for further formats, folder/adapter/."""
    state = full_state_dict(root)
    folder = Path(folder)
    if info.is_main:
        if folder.exists():
            shutil.rmtree(folder)
        if lora is not None:
            save_adapter(None, folder / "adapter", lora, state=state)  # type: ignore[arg-type]
            state = merge_lora_state_dict(state, lora.scale)
        state = {
            n: (t.to(dtype) if dtype is not None else t) for n, t in state.items() if not is_lora_name(n)
        }
        for i, fmt in enumerate(formats):
            target = folder if i == 0 else folder / fmt
            write_checkpoint(target, fmt, config, iter(state.items()))
            if tokenizer_dir is not None:
                copy_tokenizer_files(tokenizer_dir, target)
    D.barrier()
    return folder
