"""Data loading: local parquet/arrow/jsonl folders, clear errors (the hub: test_hub_data.py)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pixtral.evals import EvalConfig, run_eval
from pixtral.evals.data import load_local, select_indices
from pixtral.evals.errors import DatasetError
from pixtral.evals.images import sniff_mime, to_image_data
from pixtral.evals.prompts import load_prompt_set
from pixtral.evals.tasks import get_task
from tests.evals.fixtures import render


def test_local_jsonl_with_image_paths_and_arrow(tmp_path):
    folder = tmp_path / "chartqa"
    (folder / "imgs").mkdir(parents=True)
    (folder / "imgs" / "a.jpg").write_bytes(render("a", "JPEG"))
    rows = [{"image": "imgs/a.jpg", "question": "Q? [q:x]", "answer": "3", "type": "human_test"}]
    (folder / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    loaded = load_local(folder, "test")
    item = get_task("chartqa").build_items(0, loaded[0], load_prompt_set("explicit"), "fixed", "test")[0]
    assert item.messages[0]["content"][0]["image"].data == (folder / "imgs" / "a.jpg").read_bytes()

    arrow_dir = tmp_path / "arrow" / "test"
    arrow_dir.mkdir(parents=True)
    table = pa.Table.from_pylist(
        [{"image": {"bytes": render("b"), "path": None}, "question": "Q", "answer": "1"}]
    )
    with (
        pa.OSFile(str(arrow_dir / "data-00000-of-00001.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema) as w,
    ):
        w.write_table(table)
    assert load_local(tmp_path / "arrow", "test")[0]["answer"] == "1"


def test_local_folder_errors(tmp_path, fixtures):
    with pytest.raises(DatasetError, match="is not a folder"):
        load_local(tmp_path / "nope", "test")
    with pytest.raises(DatasetError, match="no files for split 'train'"):
        load_local(fixtures.root / "chartqa", "train")
    bad = tmp_path / "bad" / "chartqa"
    bad.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"image": None, "q": "x"}]), bad / "test-0.parquet")
    with pytest.raises(DatasetError, match=r"lack the columns \['question', 'answer'\]"):
        get_task("chartqa").build_items(
            0, load_local(bad, "test")[0], load_prompt_set("explicit"), "fixed", "test"
        )


def test_a_malformed_row_is_recorded_and_the_run_goes_on(tmp_path, server, fixtures):
    folder = tmp_path / "data" / "chartqa"
    folder.mkdir(parents=True)
    good = {"image": {"bytes": render("ok"), "path": None}, "question": "What is shown? [q:chartqa-0]",
            "answer": "42", "type": "human_test"}  # fmt: skip
    broken = dict(good, image=None)
    pq.write_table(pa.Table.from_pylist([good, broken]), folder / "test-00000.parquet")
    results = run_eval(EvalConfig(tasks=["chartqa"], output_dir=tmp_path / "out", endpoints=[server.url],
                                  data_dir=tmp_path / "data", progress=False, bootstrap=10))  # fmt: skip
    counts = results["tasks"]["chartqa"]["counts"]
    assert counts["answered"] == 1 and counts["errors"] == 1
    assert "no image in column 'image'" in results["tasks"]["chartqa"]["errors"][0]["error"]


def test_selection_is_seeded_and_limited():
    assert select_indices(5, None, False, 0) == [0, 1, 2, 3, 4]
    assert (
        select_indices(100, 5, True, 7) == select_indices(100, 5, True, 7) != select_indices(100, 5, True, 8)
    )
    with pytest.raises(DatasetError):
        select_indices(5, 0, False, 0)


def test_image_sniffing():
    assert sniff_mime(render("x", "JPEG")) == "image/jpeg"
    assert sniff_mime(render("x", "PNG")) == "image/png"
    assert to_image_data({"bytes": render("x", "JPEG"), "path": "x.png"}).mime == "image/jpeg"  # bytes decide
    assert to_image_data(None) is None


def test_parquet_rows_are_read_lazily_by_row_group(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    expected = []
    for f in range(2):
        rows = [{"question": f"q{f}-{i}", "answer": str(i)} for i in range(10)]
        expected += rows
        pq.write_table(
            pa.Table.from_pylist(rows), folder / f"test-{f:05d}-of-00002.parquet", row_group_size=3
        )
    loaded = load_local(folder, "test")
    assert len(loaded) == 20
    order = select_indices(20, None, True, 5)
    assert [loaded[i]["question"] for i in order] == [expected[i]["question"] for i in order]
    assert len(loaded.source._cache) <= 4  # only a few row groups in memory
    with pytest.raises(IndexError):
        loaded[20]


def test_naive_prompts_are_lmms_evals_texts(fixtures):
    """lmms-eval: MMMU puts a blank line before its instruction; ChartQA asks for "a single word"."""
    naive = load_prompt_set("naive")
    mmmu = get_task("mmmu")
    rows = load_local(fixtures.root / "mmmu", "validation")

    def last_text(index: int) -> str:
        item = mmmu.build_items(index, rows[index], naive, "fixed", "validation")[0]
        return [p["text"] for p in item.messages[0]["content"] if p["type"] == "text"][-1]

    assert rows[0]["question_type"] == "multiple-choice" and rows[3]["question_type"] == "open"
    assert last_text(0).endswith(
        "\nB. square\n\nAnswer with the option's letter from the given choices directly."
    )
    assert last_text(3).endswith("[q:mmmu-3]\n\nAnswer the question using a single word or phrase.")
    assert naive.for_task("chartqa").render("Q?") == "Q?\nAnswer the question with a single word."


def test_mm_mt_bench_plain_string_turns_are_sent_as_strings(fixtures):
    task = get_task("mm_mt_bench")
    rows = load_local(fixtures.root / "mm_mt_bench", "eval")
    items = task.build_items(2, rows[2], load_prompt_set("explicit"), "fixed", "eval")
    conv = json.loads(rows[2]["conversation"])
    last = items[-1].messages
    assert len(items) > 1 and isinstance(conv[2]["content"], str)
    assert isinstance(last[0]["content"], list)  # the first turn: image + text chunks, as in the dataset
    assert [m["content"] for m in last[2::2]] == [m["content"] for m in conv[2 : len(last) : 2]]
