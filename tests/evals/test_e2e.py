"""End to end over real HTTP on loopback: fixture datasets of all six tasks, the fake model and judge server."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from pixtral.evals import EvalConfig, compare_runs, run_eval
from pixtral.evals.prompts import PROMPT_EXPLICIT, PROMPT_VQA, SHORT_ANSWER
from tests.evals.fake_server import FakeOpenAIServer, judge_rating_for

ALL = ["mm_mt_bench", "mmmu", "mathvista", "chartqa", "docvqa", "vqav2"]
SRC = str(Path(__file__).resolve().parents[2] / "src")


def config(fx, url, out, tasks=ALL, **kw) -> EvalConfig:
    kw.setdefault("judge_endpoints", [url])
    return EvalConfig(tasks=list(tasks), output_dir=out, endpoints=[url], data_dir=fx.root, bootstrap=200,
                      progress=False, backoff=0.01, **kw)  # fmt: skip


def items(out: Path, task: str) -> dict[str, dict]:
    lines = (out / f"{task}.items.jsonl").read_text().splitlines()
    return {e["item_id"]: e for e in map(json.loads, lines)}


def data_url_bytes(part: dict) -> bytes:
    url = part["image_url"]["url"]
    assert url.startswith("data:image/")
    return base64.b64decode(url.split(",", 1)[1])


@pytest.fixture(scope="module")
def full_run(fixtures, tmp_path_factory):
    srv = FakeOpenAIServer(fixtures.oracle)
    srv.judge_overrides = {"UNRATEABLE": ["I will not rate this."]}
    url = srv.start()
    out = tmp_path_factory.mktemp("run") / "full"
    results = run_eval(config(fixtures, url, out))
    srv.stop()
    return results, out, srv


def test_every_item_scores_as_designed(full_run, fixtures):
    results, out, _ = full_run
    checked = 0
    for task in ALL:
        for item_id, entry in items(out, task).items():
            assert entry["status"] in ("ok", "unparseable_verdict"), entry
            for metric, value in fixtures.expect.get(item_id, {}).items():
                assert entry["metrics"][metric] == pytest.approx(value), (item_id, metric, entry["answer"])
                checked += 1
    assert checked == sum(len(v) for v in fixtures.expect.values())
    for task in ALL:
        assert results["tasks"][task]["counts"]["errors"] == 0
        assert results["tasks"][task]["counts"]["items"] == len(items(out, task))


def test_mm_mt_bench_ratings_and_unparseable_verdicts(full_run):
    results, out, srv = full_run
    mt = items(out, "mm_mt_bench")
    assert len(mt) == 6  # 1 + 2 + 3 turns
    for e in mt.values():
        if "UNRATEABLE" in e["answer"]:
            assert e["status"] == "unparseable_verdict" and e["judge"]["rating"] == -1
            assert len(e["judge"]["replies"]) == 3 and e["metrics"]["judge_rating"] is None
        else:
            assert e["metrics"]["judge_rating"] == judge_rating_for(e["answer"])
    agg = results["tasks"]["mm_mt_bench"]
    assert agg["counts"]["unparseable_verdicts"] == 1
    n_judge_calls = len(srv.judge_requests())
    assert agg["counts"]["judge_tokens"] == {
        "prompt_tokens": 10 * n_judge_calls,
        "completion_tokens": 5 * n_judge_calls,
    }
    assert agg["counts"]["tokens"]["prompt_tokens"] == 10 * 6
    rated = [e["metrics"]["judge_rating"] for e in mt.values() if e["metrics"]["judge_rating"] is not None]
    assert agg["score"] == pytest.approx(sum(rated) / len(rated), abs=1e-3)
    assert set(agg["breakdowns"]["category"]) == {"charts", "tables"}
    assert {"micro_average", "category_macro_average", "turn/1", "turn/3"} <= set(agg["mm_mt_bench"])
    assert (
        len([r for r in srv.judge_requests() if r["item"] == "mm_mt_bench:eval:2:t1"]) == 3
    )  # bounded retries


def test_judge_request_has_every_question_and_the_image_on_the_wire(full_run, fixtures):
    _, _, srv = full_run
    judged = srv.judge_requests()
    assert {r["item"] for r in judged} == set(fixtures.questions)
    for r in judged:
        body = r["body"]
        assert (
            body["model"] == "gpt-4o-2024-05-13" and body["temperature"] == 0.0 and body["max_tokens"] == 2048
        )
        parts = body["messages"][1]["content"]
        text = "".join(p["text"] for p in parts if p["type"] == "text")
        for question in fixtures.questions[r["item"]]:
            assert question in text
        images = [p for p in parts if p["type"] == "image_url"]
        assert len(images) == 1 and data_url_bytes(images[0]) == fixtures.images[r["item"]]
        assert text.count("### User:") == len(fixtures.questions[r["item"]])


def test_model_requests_follow_the_protocol(full_run, fixtures):
    _, _, srv = full_run
    reqs = {r["item"]: r["body"] for r in srv.model_requests()}
    expected_tokens = {
        "mm_mt_bench": 4096,
        "mmmu": 2048,
        "mathvista": 2048,
        "chartqa": 2048,
        "docvqa": 10,
        "vqav2": 10,
    }
    adapter = TypeAdapter(
        __import__("openai").types.chat.completion_create_params.CompletionCreateParamsNonStreaming
    )
    for item_id, body in reqs.items():
        adapter.validate_python(body)  # the official client's request schema
        task = item_id.split(":")[0]
        assert body["temperature"] == 0.0 and body["max_tokens"] == expected_tokens[task]
        assert body["model"] == "fake-pixtral"  # discovered from GET /v1/models
        assert all(m["role"] != "system" for m in body["messages"])
        first = body["messages"][0]["content"]
        if task not in ("mmmu",):
            assert first[0]["type"] == "image_url"  # image before the text
    # original bytes, JPEG and PNG alike, no re-encoding
    for i in range(4):
        part = reqs[f"chartqa:test:{i}"]["messages"][0]["content"][0]
        assert data_url_bytes(part) == fixtures.images[f"chartqa:test:{i}"]
        assert part["image_url"]["url"].startswith("data:image/png" if i % 2 else "data:image/jpeg")
    assert reqs["chartqa:test:0"]["messages"][0]["content"][1]["text"].endswith("Final Answer: <answer>.")
    assert reqs["docvqa:validation:0"]["messages"][0]["content"][1]["text"].endswith("\n" + SHORT_ANSWER)
    assert reqs["vqav2:validation:0"]["messages"][0]["content"][1]["text"].endswith("\n" + PROMPT_VQA)
    # MMMU: images interleaved where the tags were (here inside the options), tags removed
    content = reqs["mmmu:validation:1"]["messages"][0]["content"]
    assert [p["type"] for p in content] == ["text", "image_url", "text", "image_url", "text"]
    assert all("<image" not in p.get("text", "") for p in content)
    assert content[-1]["text"].endswith("\n" + PROMPT_EXPLICIT)
    # MM-MT-Bench: teacher forcing, the dataset references are the history
    msgs = reqs["mm_mt_bench:eval:2:t2"]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[1]["content"] == "Sales grow steadily." and msgs[3]["content"] == "2021 peaks."
    assert msgs[0]["content"][0]["type"] == "image_url"
    assert (
        msgs[4]["content"] == "Why? [q:mt-2-2]"
    )  # a plain-string turn is sent as the string, as the reference does


def test_reports_and_provenance(full_run):
    results, out, _ = full_run
    for name in ("results.json", "report.md", "report.html", "store.sqlite"):
        assert (out / name).is_file()
    prov = results["provenance"]
    assert prov["model"] == "fake-pixtral" and prov["scoring"] == "fixed" and prov["prompt_set"] == "explicit"
    assert prov["harness_version"] and prov["judge"]["model"] == "gpt-4o-2024-05-13"
    chart = results["tasks"]["chartqa"]
    assert set(chart["metrics"]) >= {"exact", "flex1", "flex2", "flex3"}
    assert (
        chart["metrics"]["exact"]["ci95"][0]
        <= chart["metrics"]["exact"]["mean"]
        <= chart["metrics"]["exact"]["ci95"][1]
    )
    assert chart["counts"]["parse_failures"]["exact"] == 2
    assert chart["dataset"]["source"] == "local" and chart["dataset"]["revision"].startswith("files-")
    html = (out / "report.html").read_text()
    assert "<svg" in html and "Flexible 3" in html
    assert "<link" not in html and "<script" not in html and "src=" not in html  # self-contained
    assert "| chartqa | exact |" in (out / "report.md").read_text()
    line = (out / "chartqa.items.jsonl").read_text().splitlines()[0]
    assert "base64" not in line and '"sha256"' in line  # requests without image bytes


def test_rerun_resumes_without_any_request(full_run, fixtures):
    results, out, _ = full_run
    srv = FakeOpenAIServer(fixtures.oracle)
    url = srv.start()
    try:
        again = run_eval(config(fixtures, url, out))
    finally:
        srv.stop()
    assert srv.requests == []  # everything, verdicts included, came from the store
    assert again["tasks"] == results["tasks"]
    assert again["run"]["requests"]["reused"] == sum(len(items(out, t)) for t in ALL)


def test_compat_mode_reproduces_the_reference_numbers_end_to_end(fixtures, server, tmp_path):
    out = tmp_path / "compat-scores"
    run_eval(config(fixtures, server.url, out, ["vqav2", "docvqa", "mathvista"], scoring="mistral-compat"))
    checked = 0
    for item_id, expected in fixtures.expect_compat.items():
        entry = items(out, item_id.split(":")[0])[item_id]
        for metric, value in expected.items():
            assert entry["metrics"][metric] == pytest.approx(value), (item_id, metric, entry["answer"])
            checked += 1
    assert checked == 11 and len(server.model_requests()) == 12


def test_compat_mode_sends_the_reference_harness_judge_prompt(fixtures, server, tmp_path):
    results = run_eval(config(fixtures, server.url, tmp_path / "compat", ["mm_mt_bench", "chartqa"],
                              scoring="mistral-compat"))  # fmt: skip
    for r in server.judge_requests():
        parts = r["body"]["messages"][1]["content"]
        assert all(p["type"] == "text" for p in parts)
        assert "rolecontent" in parts[0]["text"] and "[q:" not in parts[0]["text"]
    chart = [r for r in server.model_requests() if r["item"].startswith("chartqa")][0]
    assert "should should" in chart["body"]["messages"][0]["content"][1]["text"]
    assert results["tasks"]["chartqa"]["primary_metric"] == "flex2"


def test_transient_errors_are_retried_and_a_failing_item_does_not_stop_the_run(fixtures, server, tmp_path):
    server.fail_plan = {"chartqa:test:0": [503, 429, 502], "chartqa:test:1": [400]}
    out = tmp_path / "flaky"
    results = run_eval(config(fixtures, server.url, out, ["chartqa"], retries=3))
    it = items(out, "chartqa")
    assert it["chartqa:test:0"]["status"] == "ok"
    assert len([r for r in server.model_requests() if r["item"] == "chartqa:test:0"]) == 4
    assert it["chartqa:test:1"]["status"] == "error" and "HTTP 400" in it["chartqa:test:1"]["error"]
    assert (
        results["tasks"]["chartqa"]["counts"]["errors"] == 1
        and results["tasks"]["chartqa"]["metrics"]["exact"]["n"] == 3
    )
    n_before = len(server.requests)
    results = run_eval(config(fixtures, server.url, out, ["chartqa"]))
    assert [r["item"] for r in server.requests[n_before:]] == ["chartqa:test:1"]  # only the failed item again
    assert results["tasks"]["chartqa"]["counts"]["errors"] == 0


def test_endpoints_are_load_balanced_and_a_dead_one_is_survived(fixtures, tmp_path):
    a, b = FakeOpenAIServer(fixtures.oracle, delay=0.02), FakeOpenAIServer(fixtures.oracle, delay=0.02)
    ua, ub = a.start(), b.start()
    dead = "http://127.0.0.1:9/v1"  # discard port: connection refused
    try:
        cfg = config(
            fixtures, ua, tmp_path / "lb", ["chartqa", "vqav2", "docvqa"], model="fake-pixtral", retries=6
        )
        cfg.endpoints = [ua, ub, dead]
        results = run_eval(cfg)
    finally:
        a.stop()
        b.stop()
    assert len(a.requests) > 0 and len(b.requests) > 0
    assert len(a.requests) + len(b.requests) == 12
    assert all(t["counts"]["errors"] == 0 for t in results["tasks"].values())


def test_prompt_sets_naive_and_custom_file(fixtures, server, tmp_path):
    naive = run_eval(config(fixtures, server.url, tmp_path / "naive", ["chartqa"], prompts="naive"))
    assert naive["tasks"]["chartqa"]["primary_metric"] == "direct"
    texts = [r["body"]["messages"][0]["content"][1]["text"] for r in server.model_requests()]
    assert texts and all(
        t.endswith("]\nAnswer the question with a single word.") for t in texts
    )  # lmms-eval's
    prompt_file = tmp_path / "prompts.json"
    prompt_file.write_text(
        json.dumps(
            {
                "name": "terse",
                "tasks": {"chartqa": {"template": "Q: {question}\nOne word.", "max_tokens": 16}},
            }
        )
    )
    server.requests.clear()
    results = run_eval(
        config(fixtures, server.url, tmp_path / "custom", ["chartqa"], prompts=str(prompt_file))
    )
    body = server.model_requests()[0]["body"]
    assert body["max_tokens"] == 16 and body["messages"][0]["content"][1]["text"].startswith(
        "Q: What is shown?"
    )
    assert results["provenance"]["prompt_set"] == "terse"


def test_limit_and_seeded_shuffle_keep_stable_item_ids(fixtures, server, tmp_path):
    run_eval(config(fixtures, server.url, tmp_path / "s1", ["vqav2"], limit=2, shuffle=True, seed=3))
    run_eval(config(fixtures, server.url, tmp_path / "s2", ["vqav2"], limit=2, shuffle=True, seed=3))
    a, b = items(tmp_path / "s1", "vqav2"), items(tmp_path / "s2", "vqav2")
    assert list(a) == list(b) and len(a) == 2 and set(a) <= {f"vqav2:validation:{i}" for i in range(4)}


def test_cli_run_report_compare_and_user_errors(fixtures, server, tmp_path):
    env = {"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}
    base = [sys.executable, "-m", "pixtral.evals"]
    common = ["--task", "docvqa", "--data-dir", str(fixtures.root), "--endpoint", server.url, "--no-progress"]
    r1 = subprocess.run(
        base + common + ["--output-dir", str(tmp_path / "a")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r1.returncode == 0, r1.stderr
    r2 = subprocess.run(base + ["run"] + common + ["--output-dir", str(tmp_path / "b"), "--scoring", "mistral-compat"],
                        env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r2.returncode == 0, r2.stderr
    cmp = subprocess.run(base + ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json"], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert cmp.returncode == 0, cmp.stderr
    anls = json.loads(cmp.stdout)["tasks"]["docvqa"]["anls"]
    assert anls["b"] > anls["a"] and anls["n"] == 4  # compat's threshold 0 gives partial credit
    assert compare_runs(tmp_path / "a", tmp_path / "b", 100)["tasks"]["docvqa"]["anls"][
        "diff"
    ] == pytest.approx(anls["diff"], abs=1e-6)
    (tmp_path / "a" / "report.html").unlink()
    rep = subprocess.run(
        base + ["report", str(tmp_path / "a")], env=env, capture_output=True, text=True, timeout=60
    )
    assert rep.returncode == 0 and (tmp_path / "a" / "report.html").is_file()
    bad = subprocess.run(base + ["--task", "nope", "--endpoint", server.url, "--output-dir", str(tmp_path / "c")],
                         env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert (
        bad.returncode == 2
        and bad.stderr.startswith("error: unknown task 'nope'")
        and "Traceback" not in bad.stderr
    )
    missing = subprocess.run(base + ["--task", "docvqa", "--data-dir", str(tmp_path / "nowhere"), "--endpoint",
                                     server.url, "--output-dir", str(tmp_path / "d")], env=env, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert missing.returncode == 2 and "is not a folder" in missing.stderr


def test_a_rejected_api_key_stops_the_run_with_one_clear_error(fixtures, server, tmp_path):
    from pixtral.evals.errors import EvalConfigError

    server.fail_plan = {"chartqa:test:2": [401]}
    with pytest.raises(EvalConfigError, match="check the API key"):
        run_eval(config(fixtures, server.url, tmp_path / "auth", ["chartqa"]))
    assert len(server.model_requests()) <= 4  # no retries of a 401


def test_wait_for_endpoint_polls_until_the_server_is_up(fixtures, tmp_path):
    import socket
    import threading
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    late = FakeOpenAIServer(fixtures.oracle, port=port)
    timer = threading.Timer(1.0, late.start)
    timer.start()
    try:
        start = time.monotonic()
        results = run_eval(config(fixtures, f"http://127.0.0.1:{port}/v1", tmp_path / "late", ["docvqa"],
                                  wait_for_endpoint=30))  # fmt: skip
        assert time.monotonic() - start >= 0.9
        assert results["tasks"]["docvqa"]["counts"]["answered"] == 4
    finally:
        timer.join()
        late.stop()


def test_the_fake_server_speaks_the_official_client_protocol(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
    assert client.models.list().data[0].id == "fake-pixtral"
    out = client.chat.completions.create(
        model="fake-pixtral", temperature=0.0, max_tokens=10,
        messages=[{"role": "user", "content": [{"type": "text", "text": "What is shown? [q:chartqa-0]"}]}],
    )  # fmt: skip
    assert out.choices[0].message.content.endswith("Final Answer: 42")
    sent = server.model_requests()[-1]["body"]
    assert set(sent) == {"model", "messages", "temperature", "max_tokens"}  # the same body our backend sends


def test_a_second_run_in_the_same_folder_is_refused_while_one_is_running(fixtures, server, tmp_path):
    from pixtral.evals.errors import StoreError
    from pixtral.evals.store import run_lock

    out = tmp_path / "locked"
    with run_lock(out):
        with pytest.raises(StoreError, match="another `pixtral eval` is running"):
            run_eval(config(fixtures, server.url, out, ["docvqa"]))
    assert (
        run_eval(config(fixtures, server.url, out, ["docvqa"]))["tasks"]["docvqa"]["counts"]["answered"] == 4
    )


def test_endpoint_urls_are_normalised():
    from pixtral.evals.backends.http import chat_completions_url
    from pixtral.evals.errors import EvalConfigError

    for url in ("http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/chat/completions"):
        assert chat_completions_url(url) == "http://h:8000/v1/chat/completions"
    with pytest.raises(EvalConfigError):
        chat_completions_url("h:8000")


def test_a_request_over_its_timeout_is_retried_then_recorded(fixtures, tmp_path):
    slow = FakeOpenAIServer(fixtures.oracle, delay=1.0)
    url = slow.start()
    try:
        results = run_eval(config(fixtures, url, tmp_path / "slow", ["docvqa"], model="fake-pixtral", limit=1,
                                  timeout=0.3, retries=1))  # fmt: skip
    finally:
        slow.stop()
    err = results["tasks"]["docvqa"]["errors"][0]["error"]
    assert "gave up after 2 attempts" in err and "Timeout" in err
    assert len(slow.model_requests()) == 2
