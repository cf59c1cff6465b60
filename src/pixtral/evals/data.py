"""Dataset rows from Hugging Face (by name and split only) or from a local folder in the same schema.

Local folders hold ``.parquet``, ``.arrow`` or ``.jsonl`` files; the files of a split are those named
``{split}-*.{ext}`` / ``{split}.{ext}`` or lying in a ``{split}/`` folder (the layout of a Hugging Face dataset
repository). Images stay encoded: parquet image cells are ``{"bytes", "path"}`` structs, jsonl cells may be
paths relative to the folder.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import random
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixtral.evals.errors import DatasetError
from pixtral.evals.tasks.base import DatasetSpec

_EXTS = (".parquet", ".arrow", ".jsonl")


class _LazyParquet:
    """Rows of parquet files, read one row group at a time (a few cached): a 200k-image split never sits in RAM."""

    def __init__(self, files: list[Path], cache_groups: int = 4) -> None:
        import pyarrow.parquet as pq

        self._files = [pq.ParquetFile(f) for f in files]
        self._groups: list[tuple[int, int, int]] = []  # (file, row group, first row)
        start = 0
        for fi, pf in enumerate(self._files):
            for rg in range(pf.num_row_groups):
                self._groups.append((fi, rg, start))
                start += pf.metadata.row_group(rg).num_rows
        self._starts = [g[2] for g in self._groups]
        self.num_rows = start
        self._cache: OrderedDict[int, list[dict[str, Any]]] = OrderedDict()
        self._cache_groups = cache_groups

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.num_rows:
            raise IndexError(i)
        gi = bisect.bisect_right(self._starts, i) - 1
        rows = self._cache.get(gi)
        if rows is None:
            fi, rg, _ = self._groups[gi]
            rows = self._files[fi].read_row_group(rg).to_pylist()
            self._cache[gi] = rows
            if len(self._cache) > self._cache_groups:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(gi)
        return dict(rows[i - self._starts[gi]])


class _TableRows:
    def __init__(self, table: Any) -> None:
        self._table = table

    def __len__(self) -> int:
        return self._table.num_rows

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._table.slice(i, 1).to_pylist()[0]


@dataclass
class Rows:
    """Random access to a split's rows (dicts), plus where they came from."""

    source: Any  # supports len() and [i] -> dict: a datasets.Dataset, _LazyParquet or _TableRows
    provenance: dict[str, Any] = field(default_factory=dict)
    base_dir: Path | None = None

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = dict(self.source[i])
        if self.base_dir is not None:
            row["__base_dir__"] = self.base_dir
        return row


def _split_files(folder: Path, split: str) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(_EXTS))
    pattern = re.compile(rf"^{re.escape(split)}([-_.].*)?$")
    chosen = [
        p
        for p in files
        if split in p.relative_to(folder).parts[:-1]
        or pattern.match(p.name.split(".")[0])
        or pattern.match(p.stem)
    ]
    if not chosen:
        found = ", ".join(str(p.relative_to(folder)) for p in files[:10]) or "no .parquet/.arrow/.jsonl files"
        raise DatasetError(
            f"no files for split {split!r} in {folder} (found: {found}); name them {split}-*.parquet "
            f"or put them in a {split}/ folder, or pass --split"
        )
    return chosen


def _read_file(path: Path) -> Any:
    import pyarrow as pa

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    if path.suffix == ".arrow":
        try:
            with pa.memory_map(str(path)) as src:
                return pa.ipc.open_stream(src).read_all()
        except pa.ArrowInvalid:
            with pa.memory_map(str(path)) as src:
                return pa.ipc.open_file(src).read_all()
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return pa.Table.from_pylist(rows)


def load_local(folder: Path, split: str) -> Rows:
    import pyarrow as pa

    if not folder.is_dir():
        raise DatasetError(f"--data-dir {folder} is not a folder")
    files = _split_files(folder, split)
    try:
        if all(p.suffix == ".parquet" for p in files):
            source: Any = _LazyParquet(files)
        else:
            tables = [_read_file(p) for p in files]
            source = _TableRows(
                pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
            )
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise DatasetError(f"cannot read {folder}: {exc}") from exc
    digest = hashlib.sha256()
    for p in files:
        st = p.stat()
        digest.update(f"{p.relative_to(folder)}:{st.st_size}".encode())
    provenance = {
        "source": "local",
        "path": str(folder.resolve()),
        "split": split,
        "files": [str(p.relative_to(folder)) for p in files],
        "revision": "files-" + digest.hexdigest()[:16],
    }
    return Rows(source, provenance, base_dir=folder)


def load_hub(spec: DatasetSpec, name: str, config: str | None, split: str, revision: str | None) -> Rows:
    """``datasets.load_dataset(name, config, split=split)``: only that split's files are downloaded."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise DatasetError("loading by name needs the `datasets` package; or pass --data-dir") from exc
    try:
        ds = datasets.load_dataset(name, config, split=split, revision=revision)
    except Exception as exc:  # network, auth, missing split: all user-fixable
        raise DatasetError(
            f"cannot load {name}{'/' + config if config else ''} split {split!r} ({type(exc).__name__}: {exc}); "
            "check the name and split, your network / HF_TOKEN, or download it and pass --data-dir"
        ) from exc
    for col in spec.image_columns:  # keep the original encoded bytes; never decode and re-encode
        if col in ds.column_names:
            ds = ds.cast_column(col, datasets.Image(decode=False))
    provenance = {
        "source": "huggingface",
        "name": name,
        "config": config,
        "split": split,
        "revision": revision or "main",
        "fingerprint": getattr(ds, "_fingerprint", None),
    }
    return Rows(ds, provenance)


def select_indices(n: int, limit: int | None, shuffle: bool, seed: int) -> list[int]:
    """Row indices to evaluate: all, or a seeded shuffle, truncated to ``limit``."""
    indices = list(range(n))
    if shuffle:
        random.Random(seed).shuffle(indices)
    if limit is not None:
        if limit < 1:
            raise DatasetError("--limit must be at least 1")
        indices = indices[:limit]
    return indices


def load_rows(
    spec: DatasetSpec,
    task_name: str,
    data_dir: Path | None,
    dataset: str | None,
    config: str | None,
    split: str | None,
    revision: str | None,
) -> Rows:
    split = split or spec.split
    if data_dir is not None:
        folder = data_dir / task_name if (data_dir / task_name).is_dir() else data_dir
        return load_local(folder, split)
    return load_hub(
        spec, dataset or spec.name, config if config is not None else spec.config, split, revision
    )
