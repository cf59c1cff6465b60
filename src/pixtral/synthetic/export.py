"""Files: JSONL + PNG folders for training, parquet for the evaluation harness.

JSONL (``write_jsonl``): ``FOLDER/{split}.jsonl``, one conversation a line, and ``FOLDER/images/{id}-{k}.png``;
each row is ``{"messages": [...], "id", "task", "granularity", "split", "answer"}`` where ``messages`` is the
whole OpenAI-shaped conversation *including* the final assistant answer, and image parts are
``{"type": "image_url", "image_url": {"url": "images/...png"}}`` with paths relative to the JSONL file
(what ``pixtral train`` reads).

Parquet (``write_parquet``): one row per sample in the column schema of the harness's VQAv2 task
(``image`` as a ``{bytes, path}`` struct, ``question``, ``answers`` list, ``question_id``, ``answer_type`` =
the synthetic task name, so the report breaks accuracy down per task), plus what multi-image and multi-turn
samples need: ``images`` (all images, in prompt order) and ``messages`` (the prompt conversation as JSON, with
``{"type": "image"}`` placeholders filled from ``images`` in order), ``task``, ``granularity``, ``answer``.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from pixtral.errors import InputError
from pixtral.synthetic.core import Sample

EXPORT_PATTERNS = ("*.jsonl", ".writing.jsonl", "*.parquet", ".*.parquet.tmp")  # and the images/ folder


def png_bytes(image: Image.Image) -> bytes:
    """Lossless, deterministic PNG encoding (fixed zlib level, no optimiser search)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _map_images(messages: list[dict[str, Any]], fn) -> list[dict[str, Any]]:
    out, k = [], 0
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            parts = []
            for p in content:
                if p.get("type") == "image":
                    parts.append(fn(k, p["image"]))
                    k += 1
                else:
                    parts.append(dict(p))
            content = parts
        out.append({"role": m["role"], "content": content})
    return out


def _split_name(samples: list[Sample]) -> str:
    splits = {s.split for s in samples}
    return splits.pop() if len(splits) == 1 else "data"


def prepare_folder(folder: Path | str, overwrite: bool = False) -> list[Path]:
    """Make `folder` ready for an export: refuse it when it holds anything, unless `overwrite`, which removes
    what an export writes there (*.jsonl, *.parquet, images/) so no stale rows or orphan images survive.
    Returns what was removed; other files are left alone."""
    folder = Path(folder)
    if not folder.is_dir() or not any(folder.iterdir()):
        return []
    if not overwrite:
        raise InputError(
            f"{folder} is not empty: choose a new folder, or pass --overwrite to replace the data set there"
        )
    removed = [p for pattern in EXPORT_PATTERNS for p in folder.glob(pattern) if p.is_file()]
    for path in removed:
        path.unlink()
    if (folder / "images").is_dir():
        shutil.rmtree(folder / "images")
        removed.append(folder / "images")
    return removed


def write_jsonl(folder: Path | str, samples: Iterable[Sample], *, name: str | None = None) -> Path:
    """Write ``samples`` as ``folder/{name or split}.jsonl`` plus PNGs under ``folder/images/``; returns the
    JSONL path. Rows are streamed: ``samples`` may be a generator."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    tmp = folder / ".writing.jsonl"
    split = name
    with tmp.open("w", encoding="utf-8") as f:
        for sample in samples:
            split = split or sample.split

            def save(k: int, image: Image.Image, sample: Sample = sample) -> dict[str, Any]:
                rel = f"images/{sample.id}-{k}.png"
                (folder / rel).write_bytes(png_bytes(image))
                return {"type": "image_url", "image_url": {"url": rel}}

            row = {"messages": _map_images(sample.conversation(), save), "id": sample.id, "task": sample.task,
                   "granularity": sample.granularity, "split": sample.split, "answer": sample.answer}  # fmt: skip
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    path = folder / f"{split or 'data'}.jsonl"
    tmp.replace(path)
    return path


def parquet_rows(samples: Iterable[Sample]) -> list[dict[str, Any]]:
    rows = []
    for s in samples:
        encoded = [png_bytes(im) for im in s.images]
        images = [{"bytes": b, "path": f"{s.id}-{k}.png"} for k, b in enumerate(encoded)]
        rows.append(
            {
                "question_id": s.id,
                "question": s.question,
                "answers": [s.answer],
                "answer": s.answer,
                "answer_type": s.task,
                "task": s.task,
                "granularity": s.granularity,
                "image": images[0],
                "images": images,
                "messages": json.dumps(_map_images(s.messages, lambda k, im: {"type": "image"})),
                "n_images": len(images),
                "n_turns": sum(1 for m in s.messages if m["role"] == "user"),
                "text_size": s.meta.get("text_size"),
            }
        )
    return rows


def write_parquet(path: Path | str, samples: Iterable[Sample]) -> Path:
    """Write ``samples`` as one parquet file (images embedded as PNG bytes); returns the path."""
    import pyarrow as pa  # lazy: ~0.4 s of start-up for every `pixtral` command otherwise
    import pyarrow.parquet as pq

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema(
        [
            ("question_id", pa.string()),
            ("question", pa.string()),
            ("answers", pa.list_(pa.string())),
            ("answer", pa.string()),
            ("answer_type", pa.string()),
            ("task", pa.string()),
            ("granularity", pa.string()),
            ("image", image),
            ("images", pa.list_(image)),
            ("messages", pa.string()),
            ("n_images", pa.int32()),
            ("n_turns", pa.int32()),
            ("text_size", pa.int32()),
        ]
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(parquet_rows(samples), schema=schema)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path
