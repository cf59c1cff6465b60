"""Tekken files for the family's tokenizers, built from the bundled Pixtral vocabulary: the version and image
settings of each model (v7 with patch 14 / max 1540 / merge 2 for Mistral Small 3.1, v13 with [THINK] for
Magistral), the control tokens written out as v13 files require, and the first 256 BPE ranks (1256 ids)."""

from __future__ import annotations

import json
from pathlib import Path

from mistral_common.tokens.tokenizers.tekken import Tekkenizer

from pixtral.synthetic.small_tokenizer import small_tekken

N_WORDS = 256  # BPE ranks kept: 1000 control + 256 = 1256 ids
VOCAB = 1000 + N_WORDS
_NAMED = {
    **{i: t["token_str"] for i, t in enumerate(Tekkenizer.DEPRECATED_SPECIAL_TOKENS)},
    32: "[ARGS]",
    33: "[CALL_ID]",
    34: "[THINK]",
    35: "[/THINK]",
}

# (version, image_patch_size, max_image_size, spatial_merge_size) per family member
SETTINGS = {
    "pixtral-12b": ("v3", 16, 1024, 1),
    "mistral-small-3.1": ("v7", 14, 1540, 2),
    "magistral-small": ("v13", 14, 1540, 2),
}


def family_tekken(version: str, patch: int, max_size: int, merge: int) -> dict:
    data = small_tekken(N_WORDS)
    data["config"]["version"] = version
    data["image"] = {"image_patch_size": patch, "max_image_size": max_size, "spatial_merge_size": merge}
    data["special_tokens"] = [
        {"rank": i, "token_str": _NAMED.get(i, f"<SPECIAL_{i}>"), "is_control": True} for i in range(1000)
    ]
    return data


def write_family_tekken(folder: Path, version: str, patch: int, max_size: int, merge: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tekken.json"
    path.write_text(json.dumps(family_tekken(version, patch, max_size, merge)))
    return path
