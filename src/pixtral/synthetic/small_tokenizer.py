"""A small tekken tokenizer: the real Pixtral vocabulary cut to its 1000 control tokens + the first N BPE ranks.

mistral-common builds a tekken tokenizer from ``config.default_vocab_size`` (all ids) and
``config.default_num_special_tokens`` (control ids), keeping the first ``default_vocab_size - 1000`` entries of
``vocab`` (``Tekkenizer.__init__`` → ``_reload_mergeable_ranks(vocab, max_vocab=...)``); ``num_vocab_tokens`` is
informational. We write a file whose ``vocab`` holds only the first N entries and whose sizes say 1000 + N, so
``MistralTokenizer.from_file`` (and ``pixtral.prompt.tokenizer.load_tokenizer(model_dir)``) load it exactly
like the real one: same pattern, same version (v3), same image section, same control tokens. Ranks 0..255
are the 256 single bytes, so every string still encodes (N >= 256); text whose BPE pieces all have ranks < N
gets the same ids as with the full tokenizer.

    python -m pixtral.synthetic.small_tokenizer 2000 models/demo      # writes models/demo/tekken.json
"""

from __future__ import annotations

import argparse
import json
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from pixtral.errors import ConfigError
from pixtral.prompt.tokenizer import PACKAGED_TOKENIZER, TOKENIZER_FILE

N_CONTROL = 1000  # control tokens of tekken v3 (ids 0..999)
N_BYTES = 256  # BPE ranks 0..255 are the raw bytes
MAX_WORDS = 130_072  # BPE ranks the real Pixtral tokenizer uses (131072 - 1000)


def packaged_tekken() -> dict[str, Any]:
    """The JSON of mistral-common's packaged ``tekken_240911.json`` (the Pixtral-12B-2409 tokenizer)."""
    resource = files("mistral_common") / "data" / PACKAGED_TOKENIZER
    with as_file(resource) as path:
        if not path.is_file():
            raise ConfigError(f"the installed mistral-common has no data/{PACKAGED_TOKENIZER}")
        return json.loads(path.read_text(encoding="utf-8"))


def small_tekken(n_words: int, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """The tekken JSON with the control tokens and the first ``n_words`` BPE ranks (1000 + n_words ids)."""
    if not N_BYTES <= n_words <= MAX_WORDS:
        raise ConfigError(
            f"n_words must be in [{N_BYTES}, {MAX_WORDS}] (ranks 0..255 are bytes), got {n_words}"
        )
    data = source if source is not None else packaged_tekken()
    config = data["config"]
    if config.get("version") != "v3" or int(config["default_num_special_tokens"]) != N_CONTROL:
        raise ConfigError(
            f"expected a tekken v3 file with {N_CONTROL} control tokens, got version {config.get('version')!r} "
            f"with {config.get('default_num_special_tokens')}"
        )
    vocab = data["vocab"][:n_words]
    if len(vocab) != n_words or any(v["rank"] != i for i, v in enumerate(vocab)):
        raise ConfigError("the source tokenizer's vocab is not ranked 0..N-1")
    out = {k: v for k, v in data.items() if k not in ("config", "vocab")}  # image (and special_tokens if any)
    out["config"] = {
        **config,
        "num_vocab_tokens": n_words,
        "default_vocab_size": N_CONTROL + n_words,
        "default_num_special_tokens": N_CONTROL,
    }
    out["vocab"] = vocab
    return out


def write_small_tokenizer(out: Path | str, n_words: int) -> Path:
    """Write the small tokenizer to ``out`` (a folder → ``out/tekken.json``, or a file path ending in .json
    whose name contains "tekken", which mistral-common requires). Returns the file path."""
    path = Path(out)
    if path.suffix != ".json":
        path = path / TOKENIZER_FILE
    if "tekken" not in path.name:
        raise ConfigError(f"{path.name}: mistral-common only loads tekken files whose name contains 'tekken'")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(small_tekken(n_words), ensure_ascii=False, indent=None), encoding="utf-8")
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pixtral.synthetic.small_tokenizer",
        description="Write a tekken.json with the 1000 control tokens and the first N BPE ranks of Pixtral's.",
    )
    parser.add_argument("n_words", type=int, help=f"BPE ranks to keep ({N_BYTES}..{MAX_WORDS}), e.g. 2000")
    parser.add_argument("out", type=Path, help="model folder (gets tekken.json) or a .../tekken*.json path")
    args = parser.parse_args(argv)
    try:
        path = write_small_tokenizer(args.out, args.n_words)
    except ConfigError as e:
        parser.exit(2, f"error: {e}\n")
    print(f"{path}: {N_CONTROL} control tokens + {args.n_words} BPE ranks = {N_CONTROL + args.n_words} ids")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
