"""The harness against a real OpenAI-compatible server: our own `pixtral.serve` app (uvicorn on 127.0.0.1)
with the bundled default engine. Its answers must equal the in-process backend's, item by item."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import uvicorn  # a dependency of the package: no skip, an import failure must fail loudly

from pixtral import engine as engine_mod
from pixtral import serve
from pixtral.evals import EvalConfig, run_eval


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def real_server():
    engine = engine_mod.Engine.load(dtype="float32")
    app = serve.create_app(engine, serve.ServeSettings(access_log=False))
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=30)


def _answers(out, task):
    return {
        e["item_id"]: e["answer"]
        for e in map(json.loads, (out / f"{task}.items.jsonl").read_text().splitlines())
    }


def test_http_against_pixtral_serve_equals_in_process(fixtures, real_server, tmp_path):
    tasks = ["vqav2", "docvqa"]
    common = dict(tasks=tasks, data_dir=fixtures.root, limit=2, bootstrap=50, progress=False)
    http = run_eval(
        EvalConfig(output_dir=tmp_path / "http", endpoints=[real_server], concurrency=2, **common)
    )
    assert http["provenance"]["model"]  # discovered from GET /v1/models
    assert all(t["counts"]["errors"] == 0 and t["counts"]["answered"] == 2 for t in http["tasks"].values())
    run_eval(EvalConfig(output_dir=tmp_path / "inproc", in_process=True, engine_dtype="float32", **common))
    for task in tasks:
        assert _answers(tmp_path / "http", task) == _answers(tmp_path / "inproc", task)


def test_all_six_tasks_against_pixtral_serve_model_and_judge(fixtures, real_server, tmp_path):
    short = (
        tmp_path / "short.json"
    )  # the bundled model is small and untrained: keep every answer short on CPU
    templates = {t: {"template": "{question}\nAnswer:", "max_tokens": 6}
                 for t in ("mm_mt_bench", "mmmu", "mmmu_open", "mathvista", "chartqa", "docvqa", "vqav2")}  # fmt: skip
    short.write_text(json.dumps({"name": "short", "tasks": templates}))
    tasks = ["mm_mt_bench", "mmmu", "mathvista", "chartqa", "docvqa", "vqav2"]
    results = run_eval(EvalConfig(tasks=tasks, output_dir=tmp_path / "all", endpoints=[real_server], data_dir=fixtures.root,
                                  limit=1, prompts=str(short), judge_endpoints=[real_server], judge_model="default",
                                  judge_max_tokens=8, judge_attempts=1, bootstrap=20, progress=False))  # fmt: skip
    for task in tasks:
        counts = results["tasks"][task]["counts"]
        assert counts["errors"] == 0 and counts["answered"] == 1, (task, results["tasks"][task]["errors"])
    mt = results["tasks"]["mm_mt_bench"]["counts"]
    # an untrained judge rarely writes "[[x]]": every verdict is either a rating or a recorded unparseable reply
    assert mt["unparseable_verdicts"] + results["tasks"]["mm_mt_bench"]["metrics"]["judge_rating"]["n"] == 1
