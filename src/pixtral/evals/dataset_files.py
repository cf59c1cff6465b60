"""Which files of a dataset repository hold one config's split, and a hub client that fetches only those.

A Hugging Face dataset repository declares its configs and splits in the YAML header of its README
(``configs: [{config_name, data_files: [{split, path}]}]``, each path a glob or a list of globs). Without that
header the hub's conventions apply: a ``{config}/`` folder, files named ``{split}-*`` or lying in a ``{split}/``
folder. The same rules serve a local copy (``huggingface-cli download REPO --repo-type dataset --local-dir DIR``),
so a local DocVQA folder yields DocVQA's files and not the InfographicVQA files beside them.

The hub client lists a repository (files, sizes, card, commit), downloads one file into the Hugging Face cache,
or opens one for random access (HTTP range reads): a run over a few hundred items then reads the footers and the
row groups that hold them, not the whole split. This module knows file names and the hub; not rows or tasks.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from pixtral.evals.errors import DatasetError
from pixtral.units import format_bytes

DATA_EXTS = (".parquet", ".arrow", ".jsonl")


@dataclass(frozen=True)
class DeclaredConfig:
    """One entry of a dataset card's ``configs``: split name -> file globs."""

    name: str
    splits: dict[str, list[str]]


def declared_configs(card: dict[str, Any] | None) -> list[DeclaredConfig]:
    """The ``configs`` of a dataset card's YAML header, in the three shapes the hub accepts for ``data_files``."""
    out = []
    for entry in (card or {}).get("configs") or []:
        if not isinstance(entry, dict):
            continue
        data_files = entry.get("data_files")
        splits: dict[str, list[str]] = {}
        if isinstance(data_files, str):  # every file in one "train" split
            splits["train"] = [data_files]
        elif isinstance(data_files, dict):  # {split: glob or [globs]}
            for split, globs in data_files.items():
                splits[str(split)] = [globs] if isinstance(globs, str) else [str(g) for g in globs or []]
        elif isinstance(data_files, list):  # [{split, path}] or [glob, ...]
            for df in data_files:
                if isinstance(df, dict):
                    globs = df.get("path")
                    split = str(df.get("split", "train"))
                    splits.setdefault(split, []).extend([globs] if isinstance(globs, str) else globs or [])
                else:
                    splits.setdefault("train", []).append(str(df))
        out.append(DeclaredConfig(str(entry.get("config_name", "default")), splits))
    return out


def _conventional_split(paths: list[str], split: str) -> list[str]:
    """The hub's naming convention: in a ``{split}/`` folder, or ``{split}`` as a word of the file name."""
    word = re.compile(rf"(?:^|[-._ ]){re.escape(split)}(?:[-._ 0-9]|$)")
    return [p for p in paths if split in p.split("/")[:-1] or word.search(p.rsplit("/", 1)[-1].split(".")[0])]


def split_files(
    paths: list[str], card: dict[str, Any] | None, config: str | None, split: str, where: str, strict: bool
) -> list[str]:
    """The data files of ``(config, split)`` among a repository's ``/``-separated relative paths.

    ``config`` None takes the card's ``default`` (or only) config. ``strict``: the user named the config, so a
    folder without it is an error rather than read whole (a task's default config is applied leniently to
    folders that do not split by config).
    """
    data = sorted(p for p in paths if p.endswith(DATA_EXTS))
    declared = declared_configs(card)
    if declared:
        by_name = {c.name: c for c in declared}
        if config is None:
            chosen = by_name.get("default") or (declared[0] if len(declared) == 1 else None)
            if chosen is None:
                raise DatasetError(f"{where} has configs {', '.join(by_name)}: pass --dataset-config NAME")
        elif config in by_name:
            chosen = by_name[config]
        else:
            raise DatasetError(f"{where} has no config {config!r} (its configs: {', '.join(by_name)})")
        if split not in chosen.splits:
            raise DatasetError(
                f"{where} config {chosen.name!r} has no split {split!r} (its splits: {', '.join(chosen.splits)})"
            )
        globs = chosen.splits[split]
        files = [p for p in data if any(fnmatch.fnmatchcase(p, g) for g in globs)]
        if not files:
            raise DatasetError(f"{where}: no files match {globs} (config {chosen.name!r}, split {split!r})")
        return files
    if config is not None:
        inside = [p for p in data if p.split("/")[0] == config]
        if inside:
            data = inside
        elif strict:
            tops = sorted({p.split("/")[0] for p in data if "/" in p})
            raise DatasetError(f"{where} has no {config!r} folder (found: {', '.join(tops) or 'no folders'})")
    files = _conventional_split(data, split)
    if not files:
        found = ", ".join(data[:10]) or "no .parquet/.arrow/.jsonl files"
        raise DatasetError(
            f"no files for split {split!r} in {where} (found: {found}); name them {split}-*.parquet "
            f"or put them in a {split}/ folder, or pass --split"
        )
    return files


def local_card(folder: Path) -> dict[str, Any] | None:
    """The YAML header of ``folder/README.md`` (a local copy of a hub repository), if any."""
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    from huggingface_hub.repocard import metadata_load  # lazy: ~0.5 s of start-up otherwise

    try:
        return metadata_load(readme)
    except Exception as exc:  # a malformed YAML header: say which file
        raise DatasetError(f"cannot read the dataset card {readme}: {exc}") from exc


# ---------------------------------------------------------------- the hub


class RepositoryMissing(LookupError):
    """The repository (or revision) does not exist: the caller may try a mirror."""


@dataclass
class RepoListing:
    sha: str  # the commit the files belong to (recorded in results)
    files: dict[str, int | None]  # path -> size in bytes
    card: dict[str, Any] | None = field(default=None)


class HubClient(Protocol):
    def listing(self, repo: str, revision: str | None) -> RepoListing: ...

    def download(self, repo: str, path: str, sha: str) -> Path: ...

    def open(self, repo: str, path: str, sha: str) -> BinaryIO: ...


class HuggingFaceHub:
    """The real hub, through ``huggingface_hub`` (token, endpoint, cache and offline mode from its environment)."""

    def listing(self, repo: str, revision: str | None) -> RepoListing:
        from huggingface_hub import HfApi  # lazy: ~0.5 s of start-up otherwise
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        try:
            info = HfApi().dataset_info(repo, revision=revision, files_metadata=True)
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            raise RepositoryMissing(str(exc)) from exc
        card = info.card_data.to_dict() if info.card_data is not None else None
        return RepoListing(
            info.sha or revision or "main", {s.rfilename: s.size for s in info.siblings or []}, card
        )

    def download(self, repo: str, path: str, sha: str) -> Path:
        from huggingface_hub import hf_hub_download  # lazy: ~0.5 s of start-up otherwise

        return Path(hf_hub_download(repo, path, repo_type="dataset", revision=sha))

    def open(self, repo: str, path: str, sha: str) -> BinaryIO:
        from huggingface_hub import HfFileSystem  # lazy: ~0.5 s of start-up otherwise

        return HfFileSystem().open(f"datasets/{repo}@{sha}/{path}", "rb")


def hub_client() -> HubClient:
    """The client :func:`pixtral.evals.data.load_hub` uses (tests put a local one here)."""
    return HuggingFaceHub()


def human_bytes(n: int | None) -> str:
    """A listing's total size (None when the hub did not say), in the one format (pixtral/units.py)."""
    return "size unknown" if n is None else format_bytes(n)
