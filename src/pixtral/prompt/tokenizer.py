"""The tokenizer: a model folder's own (tekken.json, else its tokenizer.model.v* SentencePiece file), else
mistral-common's packaged tekken_240911.json (the tokenizer Pixtral-12B-2409 ships with: tekken v3, 131072
ids, 1000 control ids, image patch 16, max 1024).

The tokenizer decides how an image becomes pixels and [IMG] tokens (patch size, max size, spatial merge) and
which ids [IMG], [IMG_BREAK] and [IMG_END] have; `tokenizer_checked_config` checks the first against the model
config and takes the second from the tokenizer (Pixtral-Large's v7 SentencePiece tokenizer: break 14, end 15).
"""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from importlib.resources import as_file, files
from pathlib import Path

from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from pixtral.checkpoint.formats import TEKKEN_FILE, tokenizer_file
from pixtral.config import PixtralConfig
from pixtral.errors import CheckpointError, ConfigError

TOKENIZER_FILE = TEKKEN_FILE  # name of the tekken tokenizer inside a model folder
PACKAGED_TOKENIZER = "tekken_240911.json"  # inside the mistral_common package's data/
SENTENCEPIECE_V7M1 = "mistral_instruct_tokenizer_241114.model.v7m1"  # Pixtral-Large-Instruct-2411's tokenizer


def load_tokenizer(
    model_dir: Path | str | None = None, config: PixtralConfig | None = None
) -> MistralTokenizer:
    """The folder's own tokenizer when it has one, else a bundled one: Pixtral-Large's SentencePiece v7m1 for
    a model `config` with its 32768-id vocabulary (its HF-format repos carry only an HF tokenizer.json), else
    the packaged Pixtral tokenizer (loaded once, cached).

    Raises ConfigError when model_dir is not a folder or its tokenizer file cannot be loaded.
    """
    if model_dir is not None:
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ConfigError(f"model folder {str(model_dir)!r} does not exist or is not a folder")
        try:
            path = tokenizer_file(model_dir)
        except CheckpointError as e:
            raise ConfigError(str(e)) from None
        if path is not None:
            return _load_file(path)
    if config is not None and config.text.vocab_size == 32768:
        with as_file(files("mistral_common") / "data" / SENTENCEPIECE_V7M1) as path:
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
    except ImportError as e:  # a SentencePiece file without the sentencepiece package
        raise ConfigError(f"tokenizer file {str(path)} needs a package that is missing: {e}") from e
    except Exception as e:  # json, key, value and assertion errors all mean the same thing here
        raise ConfigError(
            f"tokenizer file {str(path)} cannot be loaded ({type(e).__name__}: {e}): "
            f"replace it with the model's original tokenizer file"
        ) from e
    return tokenizer


def tokenizer_checked_config(
    tokenizer: MistralTokenizer, config: PixtralConfig, source: str
) -> PixtralConfig:
    """`config` with the tokenizer's [IMG] / [IMG_BREAK] / [IMG_END] ids, after checking that the tokenizer
    cuts images the way the vision encoder expects (patch size, spatial merge, max image size).

    Raises ConfigError naming both values when they disagree; a tokenizer without image support is accepted
    (images are then refused per request)."""
    encoder = tokenizer.instruct_tokenizer.image_encoder
    if encoder is None:
        return config
    image, v = encoder.image_config, config.vision
    merge = v.spatial_merge_size if v.has_patch_merger else 1
    where = f"{source}: the tokenizer's image settings do not match the model"
    if image.image_patch_size != v.patch_size:
        raise ConfigError(
            f"{where}: image_patch_size {image.image_patch_size} vs the vision patch_size {v.patch_size}"
        )
    if image.spatial_merge_size != merge:
        raise ConfigError(
            f"{where}: spatial_merge_size {image.spatial_merge_size} vs the model's {merge} "
            f"({'patch merger' if v.has_patch_merger else 'no patch merger'})"
        )
    if image.max_image_size > v.image_size:
        raise ConfigError(
            f"{where}: max_image_size {image.max_image_size} px is larger than the vision image_size {v.image_size}"
        )
    ids = encoder.special_ids
    out = replace(
        config,
        vision=replace(
            v, image_token_id=ids.img, image_break_token_id=ids.img_break, image_end_token_id=ids.img_end
        ),
    )
    return out.validated(source)


def write_tokenizer_for(config: PixtralConfig, folder: Path | str) -> Path | None:
    """Give a random-weight model folder (`pixtral init`) a tokenizer that matches its config, built from the
    ones mistral-common bundles: Pixtral-Large's tokenizer.model.v7m1 for a 32768-id vocabulary, else the
    Pixtral tekken vocabulary as a v7 tekken.json with the config's image settings (patch, max size, merge).
    Nothing is written when the packaged tokenizer already fits, or when no bundled vocabulary has the
    config's size. Returns the file written."""
    folder, v = Path(folder), config.vision
    merge = v.spatial_merge_size if v.has_patch_merger else 1
    if config.text.vocab_size == 32768:
        if (v.patch_size, merge) != (16, 1) or v.image_size < 1024:
            raise ConfigError(
                "the bundled v7m1 tokenizer cuts images in 16 px patches up to 1024 px, unmerged"
            )
        target = folder / "tokenizer.model.v7m1"
        with as_file(files("mistral_common") / "data" / SENTENCEPIECE_V7M1) as path:
            target.write_bytes(path.read_bytes())
        return target
    if config.text.vocab_size != 131072 or (v.patch_size, merge, v.image_size) == (16, 1, 1024):
        return None
    with as_file(files("mistral_common") / "data" / PACKAGED_TOKENIZER) as path:
        data = json.loads(path.read_text(encoding="utf-8"))
    data["config"]["version"] = "v7"  # Mistral Small 3.1's: [SYSTEM_PROMPT] blocks
    data["image"] = {
        "image_patch_size": v.patch_size,
        "max_image_size": v.image_size,
        "spatial_merge_size": merge,
    }
    target = folder / TOKENIZER_FILE
    target.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return target
