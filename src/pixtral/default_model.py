"""Where the default model lives, when `--model` is omitted.

Until the trained demo model ships with the package, the default is a tiny random-weight model (the real
tokenizer, every shape small) created on first use in the user's cache and clearly marked as untrained.
`PIXTRAL_DEFAULT_MODEL` points elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

UNTRAINED_MARKER = "UNTRAINED.txt"
_CACHE_NAME = "tiny-untrained-seed0-v1"


def default_model_path() -> Path:
    env = os.environ.get("PIXTRAL_DEFAULT_MODEL")
    if env:
        return Path(env)
    cache = Path(os.environ.get("PIXTRAL_HOME", Path.home() / ".cache" / "pixtral")) / "models" / _CACHE_NAME
    if not cache.exists():
        from pixtral.checkpoint.random_init import create_random_checkpoint
        from pixtral.config import preset

        create_random_checkpoint(cache, preset("tiny"), seed=0)
    return cache
