"""Resolve a model argument to a local folder: a path as is, a hub id (`owner/name`) through huggingface_hub.

Only the files a Pixtral checkpoint needs are downloaded (never a whole repo), and offline the error says
so and how to fix it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pixtral.errors import CheckpointError

# The small files: configs, index, tokenizer, system prompt. Fetched first, to choose the format.
META_PATTERNS = [
    "params.json",
    "config.json",
    "model.safetensors.index.json",
    "tekken.json",
    "tokenizer.model.v*",  # SentencePiece (Pixtral-Large: tokenizer.model.v7m1)
    "SYSTEM_PROMPT.txt",  # Mistral Small 3.1+, Magistral, Ministral 3
]
NATIVE_PATTERNS = ["consolidated.safetensors", "consolidated-*-of-*.safetensors"]
HF_PATTERNS = ["model.safetensors", "model-*-of-*.safetensors"]
# Files of either format plus the tokenizer; everything else in a hub repo is skipped.
ALLOW_PATTERNS = [*META_PATTERNS, *NATIVE_PATTERNS, *HF_PATTERNS]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_path(model: str | Path, revision: str | None = None) -> Path:
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path}: expected a model folder, found a file")
        return path
    text = str(model)
    if not _HUB_ID.match(text):
        raise CheckpointError(f"{text}: no such folder (and not a hub id like 'mistralai/Pixtral-12B-2409')")
    return download(text, revision)


def download(repo_id: str, revision: str | None = None) -> Path:
    from huggingface_hub import snapshot_download  # lazy: ~0.5 s of start-up otherwise, for a download only
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        # Repos of the family (Mistral Small 3.1, Magistral...) hold both formats: fetch the configs first and
        # then the weights of one format only (native when params.json is there), not twice 48 GB.
        meta = Path(
            snapshot_download(
                repo_id, revision=revision, allow_patterns=META_PATTERNS, local_files_only=offline
            )
        )
        if (meta / "params.json").is_file():
            weights = NATIVE_PATTERNS
        elif (meta / "config.json").is_file():
            weights = HF_PATTERNS
        else:
            weights = ALLOW_PATTERNS
        folder = snapshot_download(
            repo_id, revision=revision, allow_patterns=[*META_PATTERNS, *weights], local_files_only=offline
        )
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{repo_id}: not in the local Hugging Face cache and the hub cannot be reached (offline). "
            "Download it on a connected machine, or pass a local folder."
        ) from None
    except HfHubHTTPError as e:
        raise CheckpointError(f"{repo_id}: download failed ({e}); check the id and your HF_TOKEN") from None
    except OSError as e:  # connection errors surface as OSError subclasses
        raise CheckpointError(f"{repo_id}: the Hugging Face hub cannot be reached ({e})") from None
    return Path(folder)
