"""Write a checkpoint of random weights in a named shape (`pixtral init`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from pixtral.checkpoint.loader import save_model
from pixtral.checkpoint.progress import ByteProgress
from pixtral.config import PixtralConfig
from pixtral.default_model import UNTRAINED_MARKER
from pixtral.model.init import init_random_weights_
from pixtral.model.pixtral import Pixtral


@contextmanager
def written_atomically(folder: str | Path) -> Iterator[Path]:
    """Yield a scratch folder beside `folder`; on success it is renamed to `folder`, on any error removed.

    A crash never leaves a half-written checkpoint under the target name. `folder` may exist only empty."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder}: exists and is not empty")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError as e:  # name the folder asked for, not the scratch folder beside it
        raise type(e)(e.errno, f"cannot create this folder ({e.strerror})", str(folder)) from e
    try:
        yield tmp
        if folder.exists():
            folder.rmdir()
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_untrained_marker(folder: Path, what: str) -> None:
    (folder / UNTRAINED_MARKER).write_text(
        f"{what}, written by `pixtral init`: this model is untrained and its output is noise. "
        "It exists to exercise the code paths.\n"
    )


def create_random_checkpoint(
    folder: str | Path,
    config: PixtralConfig,
    fmt: str = "native",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Random weights, saved atomically (written beside the target, then renamed), marked untrained."""
    with written_atomically(folder) as tmp:
        with ByteProgress("building the model"):  # no total: these steps report no progress of their own
            model = Pixtral(config)
        with ByteProgress("drawing random weights"):
            model = init_random_weights_(model, seed=seed).to(dtype)
        save_model(model, tmp, fmt)  # with its own "writing weights" bar
        write_untrained_marker(tmp, f"Random weights (seed {seed})")
    return Path(folder)
