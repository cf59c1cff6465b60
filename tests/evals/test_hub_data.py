"""Only what is scored crosses the network: a split's files (not the repository), a subset's row groups (not
the split), one config's files (DocVQA, not InfographicVQA), from the hub and from a local copy alike.

The hub is a local folder behind the client interface (`pixtral.evals.dataset_files.HubClient`): listing with
sizes and card, download, and open for range reads; every byte it serves is counted.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pixtral.evals import EvalConfig, dataset_files, run_eval
from pixtral.evals.data import load_rows
from pixtral.evals.dataset_files import RepoListing, RepositoryMissing, split_files
from pixtral.evals.errors import DatasetError, EvalConfigError
from pixtral.evals.prompts import load_prompt_set
from pixtral.evals.tasks import get_task
from tests.evals.fake_server import FakeOpenAIServer
from tests.evals.fixtures import IMAGE, render

# the card of lmms-lab/DocVQA: two configs, each with a validation and a test split
DOCVQA_CARD = """---
configs:
- config_name: DocVQA
  data_files:
  - split: validation
    path: DocVQA/validation-*
  - split: test
    path: DocVQA/test-*
- config_name: InfographicVQA
  data_files:
  - split: validation
    path: InfographicVQA/validation-*
  - split: test
    path: InfographicVQA/test-*
---
# DocVQA
"""


def _docvqa_rows(prefix: str, n: int) -> pa.Table:
    rows = [
        {"questionId": f"{prefix}-{i}", "question": f"{prefix} question {i}?", "answers": [f"{prefix}{i}"],
         "question_types": ["form"], "image": {"bytes": render(f"{prefix} {i}") + random.Random(i).randbytes(50_000), "path": None}}
        for i in range(n)
    ]  # fmt: skip
    schema = pa.schema([("questionId", pa.string()), ("question", pa.string()),
                        ("answers", pa.list_(pa.string())), ("question_types", pa.list_(pa.string())),
                        ("image", IMAGE)])  # fmt: skip
    return pa.Table.from_pylist(rows, schema=schema)


def docvqa_repo(root: Path) -> Path:
    """lmms-lab/DocVQA's layout: parquet shards of 2-row row groups in per-config folders, and the card."""
    root.mkdir(parents=True)
    (root / "README.md").write_text(DOCVQA_CARD)
    for config, tag in (("DocVQA", "doc"), ("InfographicVQA", "info")):
        for split, n in (("validation", 12), ("test", 6)):
            (root / config).mkdir(exist_ok=True)
            table = _docvqa_rows(f"{tag}-{split}", n)
            half = n // 2
            for shard, part in enumerate((table.slice(0, half), table.slice(half))):
                pq.write_table(
                    part, root / config / f"{split}-0000{shard}-of-00002.parquet", row_group_size=2
                )
    return root


class CountingFile(io.RawIOBase):
    def __init__(self, path: Path, counter: dict[str, int]) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed with the object
        self._counter = counter

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, b) -> int:
        n = self._f.readinto(b)
        self._counter["bytes"] += n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


class LocalHub:
    """Repositories as folders under ``root`` (``root/owner/name``), served through the client interface."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.listed: list[str] = []
        self.downloaded: list[str] = []
        self.opened: list[str] = []
        self.read = {"bytes": 0}

    def listing(self, repo: str, revision: str | None) -> RepoListing:
        self.listed.append(repo)
        folder = self.root / repo
        if not folder.is_dir():
            raise RepositoryMissing(repo)
        files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
        return RepoListing(revision or "0123456789abcdef", files, dataset_files.local_card(folder))

    def download(self, repo: str, path: str, sha: str) -> Path:
        self.downloaded.append(path)
        return self.root / repo / path

    def open(self, repo: str, path: str, sha: str):
        self.opened.append(path)
        return io.BufferedReader(CountingFile(self.root / repo / path, self.read))


@pytest.fixture
def hub(tmp_path, monkeypatch) -> LocalHub:
    docvqa_repo(tmp_path / "hub" / "lmms-lab" / "DocVQA")
    local = LocalHub(tmp_path / "hub")
    monkeypatch.setattr(dataset_files, "hub_client", lambda: local)
    return local


def test_a_whole_run_downloads_exactly_the_configs_split_files(hub):
    task = get_task("docvqa")
    rows = load_rows(task.dataset, "docvqa", None, None, None, None, None)
    assert sorted(hub.downloaded) == ["DocVQA/validation-00000-of-00002.parquet",
                                      "DocVQA/validation-00001-of-00002.parquet"]  # fmt: skip
    assert len(rows) == 12 and rows[11]["questionId"] == "doc-validation-11"
    p = rows.provenance
    assert (p["source"], p["name"], p["config"], p["split"]) == (
        "huggingface",
        "lmms-lab/DocVQA",
        "DocVQA",
        "validation",
    )
    assert p["revision"] == "0123456789abcdef" and p["files"] == sorted(hub.downloaded)
    repo = hub.root / "lmms-lab" / "DocVQA" / "DocVQA"
    assert p["bytes"] == sum((repo / f"validation-0000{i}-of-00002.parquet").stat().st_size for i in range(2))
    # the image bytes are the stored ones: not decoded, not re-encoded
    item = task.build_items(0, rows[0], load_prompt_set("explicit"), "fixed", "validation")[0]
    stored = pq.read_table(repo / "validation-00000-of-00002.parquet").column("image")[0].as_py()["bytes"]
    assert item.messages[0]["content"][0]["image"].data == stored


def test_a_partial_run_reads_only_footers_and_the_chosen_rows_row_groups(hub):
    rows = load_rows(get_task("docvqa").dataset, "docvqa", None, None, None, None, None, partial=True)
    split_bytes = rows.provenance["bytes"]
    assert hub.downloaded == [] and len(rows) == 12  # row counts come from the footers
    footers = hub.read["bytes"]
    assert footers < split_bytes / 4
    assert rows[7]["questionId"] == "doc-validation-7"  # one 2-row group of the second shard
    assert hub.read["bytes"] - footers < split_bytes / 4


def test_the_mirror_is_used_when_the_dataset_id_is_gone(hub):
    (hub.root / "lmms-lab").rename(hub.root / "lmms-lab-encoder")
    rows = load_rows(get_task("docvqa").dataset, "docvqa", None, None, None, None, "cafe1234")
    assert hub.listed == ["lmms-lab/DocVQA", "lmms-lab-encoder/DocVQA"]
    assert rows.provenance["name"] == "lmms-lab-encoder/DocVQA" and rows.provenance["revision"] == "cafe1234"
    hub.listed.clear()
    with pytest.raises(DatasetError, match="no dataset someone/else"):
        load_rows(get_task("docvqa").dataset, "docvqa", None, "someone/else", None, None, None)
    assert hub.listed == ["someone/else"]  # --dataset names the one repository to use


def test_dataset_config_picks_the_other_config_and_an_unknown_one_is_named(hub):
    rows = load_rows(get_task("docvqa").dataset, "docvqa", None, None, "InfographicVQA", None, None)
    assert {rows[i]["questionId"].split("-")[0] for i in range(len(rows))} == {"info"}
    with pytest.raises(DatasetError, match="no config 'Infographics'.*DocVQA, InfographicVQA"):
        load_rows(get_task("docvqa").dataset, "docvqa", None, None, "Infographics", None, None)
    with pytest.raises(DatasetError, match="no split 'train'.*validation, test"):
        load_rows(get_task("docvqa").dataset, "docvqa", None, None, None, "train", None)


def test_a_local_copy_of_the_hub_layout_honours_the_config(tmp_path):
    """`huggingface-cli download lmms-lab/DocVQA --local-dir DIR/docvqa` holds both configs: only DocVQA is read."""
    data = tmp_path / "data"
    docvqa_repo(data / "docvqa")
    task = get_task("docvqa")
    rows = load_rows(task.dataset, "docvqa", data, None, None, None, None)
    ids = [rows[i]["questionId"] for i in range(len(rows))]
    assert len(ids) == 12 and all(i.startswith("doc-validation-") for i in ids)
    info = load_rows(task.dataset, "docvqa", data, None, "InfographicVQA", None, None)
    assert len(info) == 12 and info[0]["questionId"] == "info-validation-0"
    with pytest.raises(DatasetError, match="no config 'Nope'"):
        load_rows(task.dataset, "docvqa", data, None, "Nope", None, None)


def test_folders_without_a_card_follow_the_hub_conventions(tmp_path):
    paths = ["DocVQA/validation-00000-of-00001.parquet", "DocVQA/test-00000-of-00001.parquet",
             "InfographicVQA/validation-00000-of-00001.parquet", "data/testmini-00000-of-00001.parquet",
             "data/test-00000-of-00002.parquet", "val/part.parquet", "README.md"]  # fmt: skip
    assert split_files(paths, None, "DocVQA", "validation", "x", strict=True) == [
        "DocVQA/validation-00000-of-00001.parquet"
    ]
    assert split_files(paths[3:], None, None, "test", "x", strict=False) == [
        "data/test-00000-of-00002.parquet"
    ]
    assert split_files(paths[3:], None, None, "testmini", "x", strict=False) == [
        "data/testmini-00000-of-00001.parquet"
    ]
    assert split_files(paths, None, None, "val", "x", strict=False) == ["val/part.parquet"]
    # a task's default config is lenient: a flat folder of the user's own is read whole
    assert split_files(["validation.parquet"], None, "DocVQA", "validation", "x", strict=False) == [
        "validation.parquet"
    ]
    with pytest.raises(DatasetError, match="no 'DocVQA' folder"):
        split_files(["validation.parquet"], None, "DocVQA", "validation", "x", strict=True)


def test_sample_and_lmms_eval_task_names_through_the_runner(hub, tmp_path):
    srv = FakeOpenAIServer({})
    url = srv.start()
    try:
        cfg = EvalConfig(tasks=["docvqa_val", "docvqa"], output_dir=tmp_path / "run", endpoints=[url],
                         progress=False, limit=3, shuffle=True, seed=1, bootstrap=10)  # fmt: skip
        results = run_eval(cfg)
    finally:
        srv.stop()
    assert list(results["tasks"]) == ["docvqa"]  # lmms-eval's name, and the task named twice runs once
    assert results["tasks"]["docvqa"]["counts"]["items"] == 3
    assert hub.downloaded == [] and hub.opened  # a subset reads row groups, it downloads nothing
    assert results["tasks"]["docvqa"]["dataset"]["revision"] == "0123456789abcdef"


def test_sample_is_shuffle_plus_limit_on_the_command_line():
    import argparse

    from pixtral.evals.cli import _config_from_args, add_eval_parser

    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["eval", "--task", "vqav2_val", "--output-dir", "x", "--sample", "500", "--seed", "3"]
    )
    cfg = _config_from_args(args)
    assert (cfg.tasks, cfg.limit, cfg.shuffle, cfg.seed) == (["vqav2_val"], 500, True, 3)
    args = parser.parse_args(
        ["eval", "--task", "vqav2", "--output-dir", "x", "--sample", "5", "--limit", "5"]
    )
    with pytest.raises(EvalConfigError, match="one of --sample and --limit"):
        _config_from_args(args)


def test_the_real_client_fails_with_a_clear_error_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        DatasetError, match="cannot list lmms-lab/ChartQA on the Hugging Face hub.*--data-dir"
    ):
        load_rows(get_task("chartqa").dataset, "chartqa", None, None, None, None, None)
