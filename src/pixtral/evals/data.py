"""Dataset rows from the Hugging Face hub or from a local folder in the same layout, one config's split only.

Which files hold a split is decided by the repository's dataset card or the hub's naming conventions
(:mod:`pixtral.evals.dataset_files`), the same for a hub repository and a local copy of one. From the hub, a whole
run downloads exactly those files; a partial run (``--limit``, ``--sample``) reads only their footers and the row
groups that hold the chosen rows. Local folders hold ``.parquet``, ``.arrow`` or ``.jsonl`` files. Images stay
encoded: parquet image cells are ``{"bytes", "path"}`` structs, jsonl cells may be paths relative to the folder.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import random
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixtral.evals import dataset_files
from pixtral.evals.dataset_files import RepositoryMissing, human_bytes, local_card, split_files
from pixtral.evals.errors import DatasetError
from pixtral.evals.tasks.base import DatasetSpec


class _LazyParquet:
    """Rows of parquet files, read one row group at a time (a few cached): a 200k-image split never sits in RAM.

    ``files`` are paths or open binary files (a hub file opened for range reads: only the footer and the row
    groups asked for are fetched)."""

    def __init__(self, files: list[Any], cache_groups: int = 4) -> None:
        import pyarrow.parquet as pq  # lazy: ~0.4 s of start-up for every `pixtral` command otherwise

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


def _read_file(path: Path) -> Any:
    import pyarrow as pa  # lazy: ~0.4 s of start-up for every `pixtral` command otherwise

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


def load_local(folder: Path, split: str, config: str | None = None, strict: bool = False) -> Rows:
    """One config's split of a local folder (``strict``: the user named the config, see ``split_files``)."""
    import pyarrow as pa  # lazy: ~0.4 s of start-up for every `pixtral` command otherwise

    if not folder.is_dir():
        raise DatasetError(f"--data-dir {folder} is not a folder")
    paths = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    chosen = split_files(paths, local_card(folder), config, split, where=str(folder), strict=strict)
    files = [folder / p for p in chosen]
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
        "config": config,
        "split": split,
        "files": chosen,
        "revision": "files-" + digest.hexdigest()[:16],
    }
    return Rows(source, provenance, base_dir=folder)


def load_hub(
    names: list[str], config: str | None, split: str, revision: str | None, strict: bool, partial: bool
) -> Rows:
    """One config's split from the first repository of ``names`` that exists (a dataset's id, then its mirrors).

    A whole run downloads exactly the split's files into the Hugging Face cache; a ``partial`` one opens them
    for range reads, so only footers and the row groups of the chosen rows cross the network.
    """
    client = dataset_files.hub_client()
    listing, name = None, None
    for candidate in names:
        try:
            listing, name = client.listing(candidate, revision), candidate
            break
        except RepositoryMissing:
            continue
        except Exception as exc:  # network, auth, offline mode: all user-fixable
            raise DatasetError(
                f"cannot list {candidate} on the Hugging Face hub ({type(exc).__name__}: {exc}); check your "
                "network / HF_TOKEN, or download it and pass --data-dir (docs/evaluation.md)"
            ) from exc
    if listing is None or name is None:
        raise DatasetError(
            f"no dataset {' or '.join(names)}{'@' + revision if revision else ''} on the Hugging Face hub; "
            "pass --dataset ID (and --revision) or --data-dir"
        )
    paths = split_files(list(listing.files), listing.card, config, split, where=name, strict=strict)
    if not all(p.endswith(".parquet") for p in paths):
        raise DatasetError(
            f"{name} stores split {split!r} as {sorted({Path(p).suffix for p in paths})}, not parquet: download "
            "it (huggingface-cli download) and pass --data-dir"
        )
    sizes = [listing.files.get(p) for p in paths]
    total = None if None in sizes else sum(s or 0 for s in sizes)
    how = "reading the chosen rows' row groups only" if partial else "downloading (cached)"
    print(
        f"{name}@{listing.sha[:12]} {config + ' ' if config else ''}{split}: {len(paths)} files, "
        f"{human_bytes(total)}; {how}",
        file=sys.stderr,
    )
    try:
        if partial:
            sources: list[Any] = [client.open(name, p, listing.sha) for p in paths]
        else:
            sources = [client.download(name, p, listing.sha) for p in paths]
        source = _LazyParquet(sources)
    except Exception as exc:
        raise DatasetError(f"cannot fetch {name} split {split!r} ({type(exc).__name__}: {exc})") from exc
    provenance = {
        "source": "huggingface",
        "name": name,
        "config": config,
        "split": split,
        "revision": listing.sha,
        "files": paths,
        "bytes": total,
    }
    return Rows(source, provenance)


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
    partial: bool = False,
) -> Rows:
    """The rows of one task's split: ``--dataset-config`` (strict) or the task's default config (lenient);
    from ``data_dir`` (its ``TASK/`` sub-folder when present), else the hub (the dataset's id, then its mirrors)."""
    split = split or spec.split
    strict = config is not None
    config = config if config is not None else spec.config
    if data_dir is not None:
        folder = data_dir / task_name if (data_dir / task_name).is_dir() else data_dir
        return load_local(folder, split, config, strict)
    names = [dataset] if dataset else [spec.name, *spec.mirrors]
    return load_hub(names, config, split, revision, strict, partial)
