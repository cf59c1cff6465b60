"""The two published checkpoint formats, each a (read, write) pair around one in-memory convention:
native tensor names, q/k rows laid out for interleaved RoPE, tensors in their stored dtype.

- native: `params.json` + `consolidated.safetensors` (mistralai/Pixtral-12B-2409) or, read only,
          `consolidated-XXXXX-of-YYYYY.safetensors` shards (Pixtral-Large-Instruct-2411)
- hf:     `config.json` + `model.safetensors` or `model-XXXXX-of-YYYYY.safetensors` + index
          (mistral-community/pixtral-12b, LlavaForConditionalGeneration)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import torch

from pixtral.checkpoint import fp8
from pixtral.checkpoint.hf_names import (
    hf_to_native_name,
    interleaved_to_half,
    native_to_hf_name,
    rope_heads,
)
from pixtral.checkpoint.progress import ByteProgress
from pixtral.checkpoint.safetensors_file import SafetensorsFile, write_tensors
from pixtral.checkpoint.source import TensorSource
from pixtral.config import PixtralConfig
from pixtral.errors import CheckpointError, ConfigError

NATIVE_PARAMS, NATIVE_WEIGHTS = "params.json", "consolidated.safetensors"
NATIVE_SHARDS = "consolidated-*-of-*.safetensors"  # large native releases (Pixtral-Large: 51 shards)
HF_CONFIG, HF_WEIGHTS, HF_INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
TEKKEN_FILE = "tekken.json"
SENTENCEPIECE_GLOB = (
    "tokenizer.model.v*"  # Pixtral-Large: tokenizer.model.v7m1 (m1: image patch 16, max 1024)
)
SYSTEM_PROMPT_FILE = "SYSTEM_PROMPT.txt"
TOKENIZER_FILES = (TEKKEN_FILE, SENTENCEPIECE_GLOB, SYSTEM_PROMPT_FILE)  # what travels with a model


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    """Copy the tokenizer files and the system prompt `src` has (TOKENIZER_FILES) into the model folder `dst`."""
    for pattern in TOKENIZER_FILES:
        for path in sorted(src.glob(pattern)):
            if path.is_file():
                shutil.copyfile(path, dst / path.name)


def tokenizer_file(folder: Path) -> Path | None:
    """The model folder's own tokenizer: tekken.json, else its one tokenizer.model.v* (SentencePiece); None
    when it has neither. Several SentencePiece files and no tekken.json are ambiguous: an error names them."""
    if (folder / TEKKEN_FILE).is_file():
        return folder / TEKKEN_FILE
    candidates = sorted(p for p in folder.glob(SENTENCEPIECE_GLOB) if p.is_file())
    if len(candidates) > 1:
        raise CheckpointError(
            f"{folder}: several tokenizer files ({', '.join(p.name for p in candidates)}): keep only the "
            "model's own"
        )
    return candidates[0] if candidates else None


FORMATS = ("native", "hf")


def _native_weight_files(folder: Path) -> list[Path]:
    if (folder / NATIVE_WEIGHTS).is_file():
        return [folder / NATIVE_WEIGHTS]
    return sorted(p for p in folder.glob(NATIVE_SHARDS) if p.is_file())


def detect_format(folder: Path) -> str:
    if (folder / NATIVE_PARAMS).is_file() and _native_weight_files(folder):
        return "native"
    if (folder / HF_CONFIG).is_file():
        return "hf"
    if (folder / NATIVE_PARAMS).is_file():
        raise CheckpointError(f"{folder}: has {NATIVE_PARAMS} but no {NATIVE_WEIGHTS}")
    raise CheckpointError(
        f"{folder}: not a Pixtral checkpoint (expected {NATIVE_PARAMS} + {NATIVE_WEIGHTS}, or {HF_CONFIG} + "
        f"{HF_WEIGHTS} / sharded weights with {HF_INDEX})"
    )


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


# ---- read ---------------------------------------------------------------------------------------


def read_config(folder: Path, fmt: str) -> PixtralConfig:
    if fmt == "native":
        return PixtralConfig.from_params_json(read_json(folder / NATIVE_PARAMS), str(folder / NATIVE_PARAMS))
    return PixtralConfig.from_hf_config(read_json(folder / HF_CONFIG), str(folder / HF_CONFIG))


def read_sources(folder: Path, fmt: str, config: PixtralConfig) -> dict[str, TensorSource]:
    """Native name -> where to read it. Unknown or duplicated tensors are errors naming file and tensor."""
    sources: dict[str, TensorSource] = {}
    scales: dict[str, TensorSource] = {}  # FP8: stored weight name -> its scale
    for file in _weight_files(folder, fmt):
        sf = SafetensorsFile(file)
        for stored in sf.tensors:
            if fp8.is_activation_scale(stored):
                continue  # static FP8 activation scales: we compute in higher precision
            target = fp8.scale_target(stored)
            if target is not None:
                scales[target] = TensorSource(sf, stored)
                continue
            name = stored if fmt == "native" else hf_to_native_name(stored)
            if name is None:
                raise CheckpointError(f"{file}: unexpected tensor '{stored}' (not part of a Pixtral model)")
            if name in sources:
                raise CheckpointError(f"{file}: tensor '{stored}' appears twice in the checkpoint")
            heads = rope_heads(name, config) if fmt == "hf" else None  # permuted on read (source.py)
            sources[name] = TensorSource(sf, stored, heads)
    return _attach_fp8_scales(sources, scales)


def _attach_fp8_scales(
    sources: dict[str, TensorSource], scales: dict[str, TensorSource]
) -> dict[str, TensorSource]:
    by_stored = {src.stored_name: name for name, src in sources.items()}
    for target, scale in scales.items():
        if target not in by_stored:
            raise CheckpointError(
                f"{scale.file.path}: FP8 scale '{scale.stored_name}' has no weight '{target}'"
            )
        name = by_stored[target]
        sources[name] = replace(sources[name], scale=scale)
    for src in sources.values():
        stored_dtype = src.file.tensors[src.stored_name].torch_dtype
        if stored_dtype in fp8.FP8_DTYPES and src.scale is None:
            raise CheckpointError(
                f"{src.file.path}: FP8 tensor '{src.stored_name}' has no scale tensor (qscale_weight / weight_scale_inv)"
            )
    return sources


def _weight_files(folder: Path, fmt: str) -> list[Path]:
    if fmt == "native":
        return _native_weight_files(folder)
    if (folder / HF_INDEX).is_file():
        index = read_json(folder / HF_INDEX)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{folder / HF_INDEX}: no 'weight_map'")
        files = sorted(set(weight_map.values()))
        for f in files:
            if not (folder / f).is_file():
                raise CheckpointError(f"{folder / HF_INDEX}: lists shard '{f}', which is missing")
        return [folder / f for f in files]
    if (folder / HF_WEIGHTS).is_file():
        return [folder / HF_WEIGHTS]
    raise CheckpointError(f"{folder}: no {HF_WEIGHTS} and no {HF_INDEX}")


# ---- write --------------------------------------------------------------------------------------


def write_checkpoint(
    folder: Path,
    fmt: str,
    config: PixtralConfig,
    tensors: Iterable[tuple[str, torch.Tensor]],
    max_shard_bytes: int = 5 * 1024**3,
) -> None:
    """Write native-convention tensors in `fmt`. Tensors are written in their own dtype (no cast).

    The tensors are gathered first (`tensors` may be a lazy reader with its own progress bar), then written
    file by file behind one "writing" progress bar."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    if config.text.tied_embeddings:  # the output matrix is the embedding matrix: not stored (both formats)
        tensors = ((name, t) for name, t in tensors if name != "output.weight")
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "native":
        _write_files(folder, {NATIVE_WEIGHTS: dict(tensors)})
        (folder / NATIVE_PARAMS).write_text(json.dumps(config.to_params_json(), indent=2) + "\n")
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors:
        heads = rope_heads(name, config)
        if heads is not None:
            t = interleaved_to_half(t, *heads)
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][native_to_hf_name(name)] = t
        size += nbytes
    if len(shards) == 1:
        _write_files(folder, {HF_WEIGHTS: shards[0]})
    else:
        files = {
            f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors": shard for i, shard in enumerate(shards)
        }
        _write_files(folder, files)
        weight_map = {name: fname for fname, shard in files.items() for name in shard}
        total = sum(t.numel() * t.element_size() for shard in shards for t in shard.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / HF_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    (folder / HF_CONFIG).write_text(json.dumps(config.to_hf_config(), indent=2) + "\n")


def _write_files(folder: Path, files: dict[str, dict[str, torch.Tensor]]) -> None:
    total = sum(t.numel() * t.element_size() for tensors in files.values() for t in tensors.values())
    with ByteProgress("writing weights", total) as bar:
        for fname, tensors in files.items():
            write_tensors(folder / fname, tensors, metadata={"format": "pt"}, on_bytes=bar.advance)
