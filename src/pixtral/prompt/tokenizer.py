"""The tokenizer: a model folder's own tekken.json, else mistral-common's packaged tekken_240911.json
(the tokenizer Pixtral-12B-2409 ships with: tekken v3, 131072 ids, 1000 control ids, image patch 16, max 1024).
"""

from __future__ import annotations

import functools
from importlib.resources import as_file, files
from pathlib import Path

from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from pixtral.errors import ConfigError

TOKENIZER_FILE = "tekken.json"  # name of the tokenizer inside a model folder
PACKAGED_TOKENIZER = "tekken_240911.json"  # inside the mistral_common package's data/


def load_tokenizer(model_dir: Path | str | None = None) -> MistralTokenizer:
    """`model_dir/tekken.json` when it exists, else the packaged Pixtral tokenizer (loaded once, cached).

    Raises ConfigError when model_dir is not a folder or its tekken.json cannot be loaded.
    """
    if model_dir is not None:
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ConfigError(f"model folder {str(model_dir)!r} does not exist or is not a folder")
        path = model_dir / TOKENIZER_FILE
        if path.is_file():
            return _load_file(path)
    return packaged_tokenizer()


@functools.cache
def packaged_tokenizer() -> MistralTokenizer:
    """mistral-common's own copy of the Pixtral-12B-2409 tokenizer (about 1 s to load; cached)."""
    resource = files("mistral_common") / "data" / PACKAGED_TOKENIZER
    with as_file(resource) as path:
        if not path.is_file():
            raise ConfigError(
                f"the installed mistral-common has no data/{PACKAGED_TOKENIZER}: reinstall mistral-common[image]"
            )
        return _load_file(path)


def _load_file(path: Path) -> MistralTokenizer:
    try:
        tokenizer = MistralTokenizer.from_file(str(path))
    except Exception as e:  # json, key, value and assertion errors all mean the same thing here
        raise ConfigError(
            f"tokenizer file {str(path)} cannot be loaded ({type(e).__name__}: {e}): "
            f"replace it with the model's original {TOKENIZER_FILE}"
        ) from e
    return tokenizer
