"""Where the default model lives, when `--model` is omitted.

The default is the demo model bundled with the package, `pixtral/assets/default-model` (params.json,
consolidated.safetensors, tekken.json; 1.6 M parameters trained on the synthetic shape questions, see
docs/demo-model.md). `PIXTRAL_DEFAULT_MODEL` points elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

UNTRAINED_MARKER = "UNTRAINED.txt"
BUNDLED_MODEL = Path(__file__).parent / "assets" / "default-model"


def default_model_path() -> Path:
    env = os.environ.get("PIXTRAL_DEFAULT_MODEL")
    if env:
        return Path(env)
    return BUNDLED_MODEL
