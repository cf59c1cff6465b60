"""Durability: kill -9 the eval process at random points, re-run, and compare with an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.evals.fake_server import FakeOpenAIServer
from tests.evals.fixtures import build_fixtures

SRC = str(Path(__file__).resolve().parents[2] / "src")
TASKS = "mm_mt_bench,chartqa,vqav2"


def _cmd(data: Path, url: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "pixtral.evals", "run", "--task", TASKS, "--data-dir", str(data),
            "--endpoint", url, "--judge-endpoint", url, "--output-dir", str(out), "--no-progress",
            "--concurrency", "3", "--judge-concurrency", "2", "--backoff", "0.01", "--bootstrap", "200"]  # fmt: skip


def _finished(out: Path) -> tuple[set[str], set[str]]:
    db = out / "store.sqlite"
    if not db.exists():
        return set(), set()
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        answers = {r[0] for r in con.execute("SELECT item_id FROM answers")}
        verdicts = {r[0] for r in con.execute("SELECT item_id FROM verdicts")}
    except sqlite3.OperationalError:  # killed before the schema was created
        return set(), set()
    finally:
        con.close()
    return answers, verdicts


def _stable(out: Path) -> tuple[dict, dict[str, str]]:
    results = json.loads((out / "results.json").read_text())
    results.pop("run")
    results["config"].pop("output_dir")
    items = {p.name: p.read_text() for p in sorted(out.glob("*.items.jsonl"))}
    return results, items


def _fixture_server(tmp_path: Path):
    fx = build_fixtures(tmp_path / "data", copies=10)  # 40 chartqa + 40 vqav2 rows + 6 MM-MT-Bench turns
    srv = FakeOpenAIServer(fx.oracle, delay=0.02)
    srv.judge_overrides = {"UNRATEABLE": ["no rating"]}
    return fx, srv


def test_kill_9_at_random_points_then_resume_equals_uninterrupted_run(tmp_path):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    fx, srv = _fixture_server(tmp_path)
    url = srv.start()
    env = {"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}
    out = tmp_path / "killed"
    kills, runs = 0, 0
    try:
        while True:
            runs += 1
            assert runs <= 15, f"did not finish (seed {seed})"
            done_answers, done_verdicts = _finished(out)
            n0 = len(srv.requests)
            proc = subprocess.Popen(
                _cmd(fx.root, url, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            target = rng.randint(1, 8) if kills < 5 else None
            deadline = time.time() + 120
            while proc.poll() is None and time.time() < deadline:
                if target is not None and len(srv.requests) - n0 >= target:
                    time.sleep(rng.uniform(0, 0.05))
                    proc.kill()  # SIGKILL: no cleanup, no flush
                    kills += 1
                    break
                time.sleep(0.002)
            rc = proc.wait(timeout=120)
            stderr = proc.stderr.read().decode()
            proc.stderr.close()
            for r in srv.requests[n0:]:
                done = done_verdicts if r["judge"] else done_answers
                assert r["item"] not in done, f"finished item {r['item']} requested again (seed {seed})"
            if target is None or rc >= 0:  # the run ended on its own
                assert rc in (0, 1), stderr
                if kills >= 5:
                    break
    finally:
        srv.stop()
    assert kills >= 5

    # the same evaluation, never interrupted
    srv2 = FakeOpenAIServer(fx.oracle)
    srv2.judge_overrides = {"UNRATEABLE": ["no rating"]}
    url2 = srv2.start()
    try:
        clean = tmp_path / "clean"
        subprocess.run(_cmd(fx.root, url2, clean), env=env, check=True, capture_output=True, timeout=120)
    finally:
        srv2.stop()
    n_items = 6 + 40 + 40
    model_items = [r["item"] for r in srv2.model_requests()]
    assert len(model_items) == len(set(model_items)) == n_items
    killed_results, killed_items = _stable(out)
    clean_results, clean_items = _stable(clean)
    killed_results["provenance"]["endpoints"] = clean_results["provenance"]["endpoints"] = None
    killed_results["provenance"]["judge"]["endpoints"] = clean_results["provenance"]["judge"]["endpoints"] = (
        None
    )
    killed_results["config"]["endpoints"] = clean_results["config"]["endpoints"] = None
    killed_results["config"]["judge_endpoints"] = clean_results["config"]["judge_endpoints"] = None
    assert killed_results == clean_results
    assert killed_items == clean_items
    assert sum(len(v.splitlines()) for v in killed_items.values()) == n_items


def test_at_most_concurrency_answers_are_ever_unsaved(tmp_path, monkeypatch):
    """The kill -9 bound: between its request and its committed answer an item holds one of --concurrency slots,
    so a new request never starts while `concurrency` answers are received but not yet on disk (slow fsync)."""
    from pixtral.evals import EvalConfig, run_eval
    from pixtral.evals.backends.http import OpenAIHTTPBackend
    from pixtral.evals.store import GroupCommitter, Store

    unsaved, peak = 0, 0
    complete, commit, apply = OpenAIHTTPBackend.complete, GroupCommitter.commit, Store.apply

    async def counting_complete(self, *args, **kwargs):
        nonlocal unsaved, peak
        unsaved += 1
        peak = max(peak, unsaved)
        return await complete(self, *args, **kwargs)

    async def counting_commit(self, ops):
        nonlocal unsaved
        await commit(self, ops)
        if ops[0][0].startswith("INSERT OR REPLACE INTO answers"):
            unsaved -= 1

    def slow_apply(self, ops):
        time.sleep(0.03)  # a slow disk: answers arrive faster than they are committed
        apply(self, ops)

    monkeypatch.setattr(OpenAIHTTPBackend, "complete", counting_complete)
    monkeypatch.setattr(GroupCommitter, "commit", counting_commit)
    monkeypatch.setattr(Store, "apply", slow_apply)
    fx = build_fixtures(tmp_path / "data", copies=3)
    srv = FakeOpenAIServer(fx.oracle)
    url = srv.start()
    try:
        cfg = EvalConfig(tasks=["chartqa", "vqav2"], output_dir=tmp_path / "out", endpoints=[url],
                         data_dir=fx.root, progress=False, concurrency=2, bootstrap=10)  # fmt: skip
        results = run_eval(cfg)
    finally:
        srv.stop()
    assert results["run"]["requests"]["generated"] == 24 and unsaved == 0
    assert peak <= 2


def test_concurrency_below_one_is_refused_for_every_backend(tmp_path):
    import pytest

    from pixtral.evals import EvalConfig, run_eval
    from pixtral.evals.errors import EvalConfigError

    with pytest.raises(EvalConfigError, match="--concurrency must be at least 1"):
        run_eval(EvalConfig(tasks=["chartqa"], output_dir=tmp_path, in_process=True, concurrency=0))
