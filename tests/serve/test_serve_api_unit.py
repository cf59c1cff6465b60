"""The server's own logic over a stand-in engine: protocol shapes, errors, limits, auth, queueing."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from pixtral.serve import ServeSettings, create_app
from tests.serve.fake_engine import FakeEngine
from tests.serve.serve_helpers import (
    data_url,
    image_message,
    jpeg_bytes,
    live_server,
    metric,
    png_bytes,
    png_header_only,
)

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Hello"}]


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    return body["error"]


def sse_events(text: str) -> list:
    events = []
    for block in text.strip().split("\n\n"):
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_plain_completion_shape(fake_client):
    r = fake_client.post(CHAT, json={"model": "fake-pixtral", "messages": HELLO, "max_tokens": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "fake-pixtral"
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "hello world, this"}
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 3


def test_stream_protocol_with_usage(fake_client):
    r = fake_client.post(
        CHAT,
        json={"messages": HELLO, "max_tokens": 2, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "hello world,"
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2


def test_stream_without_usage_has_no_usage_field(fake_client):
    r = fake_client.post(CHAT, json={"messages": HELLO, "max_tokens": 2, "stream": True})
    chunks = sse_events(r.text)[:-1]
    assert all("usage" not in c for c in chunks)


def test_n_choices_and_seeds(fake_client):
    r = fake_client.post(CHAT, json={"messages": HELLO, "max_tokens": 2, "n": 3, "seed": 7})
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"]["completion_tokens"] == 6


@pytest.mark.parametrize(
    ("payload", "param_part"),
    [
        ({"messages": []}, "messages"),
        ({"messages": HELLO, "temperature": 3}, "temperature"),
        ({"messages": HELLO, "top_p": 0}, "top_p"),
        ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"messages": HELLO, "n": 0}, "n"),
        ({"messages": HELLO, "seed": -1}, "seed"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
        ({"messages": [{"role": "user", "content": [{"type": "video", "video": "x"}]}]}, "content"),
        ({"messages": [{"role": "user", "content": "\ud800"}]}, "content"),
    ],
)
def test_invalid_requests_are_400_naming_the_field(fake_client, payload, param_part):
    r = fake_client.post(CHAT, content=json.dumps(payload), headers={"content-type": "application/json"})
    assert r.status_code == 400
    err = error_of(r)
    assert err["type"] == "invalid_request_error"
    assert param_part in (err["param"] or "") + err["message"]


@pytest.mark.parametrize(
    "body", [b"{", b"", b"null", b"[1,2]", b'{"messages": "hi"}', b"\xff\xfe", b"[" * 100000]
)
def test_malformed_bodies_are_400(fake_client, body):
    r = fake_client.post(CHAT, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error_of(r)


def test_unknown_model_unsupported_param_and_limits(fake_client):
    r = fake_client.post(CHAT, json={"model": "gpt-4o", "messages": HELLO})
    assert r.status_code == 404 and error_of(r)["code"] == "model_not_found"
    r = fake_client.post(CHAT, json={"messages": HELLO, "tool_choice": "required"})
    assert r.status_code == 400 and error_of(r)["param"] == "tool_choice"
    r = fake_client.post(CHAT, json={"messages": HELLO, "max_tokens": 10**9})
    assert r.status_code == 400 and "max_tokens" in error_of(r)["message"]
    r = fake_client.post(CHAT, json={"messages": HELLO, "n": 1000})
    assert r.status_code == 400


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ({"best_of": 3}, None, "best_of"),  # a field this server does not know at all
        (
            {"stream_options": {"include_usage": True, "continuous_usage_stats": True}},
            None,
            "stream_options.continuous_usage_stats",
        ),
        ({"parallel_tool_calls": False}, None, "parallel_tool_calls"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "strict": True}}]},
            None,
            "tools.0.function.strict",
        ),
        (
            None,
            {"role": "assistant", "content": "hi", "refusal": "no"},
            "messages.0.refusal",
        ),
        (None, {"role": "user", "content": "hi", "name": "alice"}, "messages.0.name"),
        (
            None,
            {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {}}]},
            "messages.0.content.0.cache_control",
        ),
        (
            None,
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x", "detail": "low"}}]},
            "messages.0.content.0.image_url.detail",
        ),
    ],
)
def test_parameters_not_honoured_are_refused_by_name(fake_client, field, value, param):
    body = {"messages": [value] if value else HELLO, "max_tokens": 2, **(field or {})}
    r = fake_client.post(CHAT, json=body)
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["code"] == "unsupported_parameter" and err["param"] == param, err
    assert err["param"] in err["message"]


def test_neutral_values_of_unsupported_parameters_and_null_extras_are_accepted(fake_client):
    neutral = {
        "repetition_penalty": 1.0,
        "min_p": 0.0,
        "min_tokens": 0,
        "ignore_eos": False,
        "stop_token_ids": [],
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "logprobs": False,
        "tool_choice": "auto",
        "user": "u-1",
        "best_of": None,  # null asks for nothing, whatever the field
    }
    messages = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x", "detail": "high"}}]}
    ]
    messages = HELLO + [{"role": "assistant", "content": "hi", "tool_calls": None, "refusal": None}] + HELLO
    r = fake_client.post(CHAT, json={"messages": messages, "max_tokens": 2, **neutral})
    assert r.status_code == 200, r.text


SAMPLING_CONTROLS = [  # request field and value -> the SamplingParams field the engine gets
    ({"presence_penalty": 0.5}, {"presence_penalty": 0.5}),
    ({"frequency_penalty": -1.25}, {"frequency_penalty": -1.25}),
    ({"repetition_penalty": 1.3}, {"repetition_penalty": 1.3}),
    ({"min_p": 0.1}, {"min_p": 0.1}),
    ({"min_tokens": 2}, {"min_tokens": 2}),
    ({"ignore_eos": True}, {"ignore_eos": True}),
    ({"stop_token_ids": [2, 7]}, {"stop_token_ids": [2, 7]}),
    ({"logit_bias": {"1500": -100, "42": 3.5}}, {"logit_bias": {1500: -100.0, 42: 3.5}}),
    ({"logprobs": True}, {"logprobs": 0}),
    ({"logprobs": True, "top_logprobs": 20}, {"logprobs": 20}),
]


@pytest.mark.parametrize(("field", "expected"), SAMPLING_CONTROLS, ids=lambda v: ",".join(map(str, v)))
def test_sampling_controls_are_honoured_they_reach_the_engine(fake_client, fake_engine, field, expected):
    r = fake_client.post(CHAT, json={"messages": HELLO, "max_tokens": 4, "n": 2, **field})
    assert r.status_code == 200, r.text
    [params] = fake_engine.params  # one stream carries the n choices
    assert params.n == 2
    for name, value in expected.items():
        assert getattr(params, name) == value, name


@pytest.mark.parametrize(
    ("field", "param"),
    [
        ({"top_logprobs": 3}, "top_logprobs"),  # without logprobs: true
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"min_tokens": 5}, "min_tokens"),  # over max_tokens
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"logit_bias": {"12": 101}}, "logit_bias"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"131072": 1}}, "logit_bias"),  # outside the vocabulary
        ({"stop_token_ids": [131072]}, "stop_token_ids"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"tool_choice": "required"}, "tool_choice"),  # without tools
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
        ({"response_format": {"type": "json_object"}, "guided_regex": "a+"}, "guided_regex"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
    ],
)
def test_sampling_controls_out_of_range_are_400_naming_the_field(fake_client, fake_engine, field, param):
    r = fake_client.post(CHAT, json={"messages": HELLO, "max_tokens": 4, **field})
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert param in (err["param"] or "") + err["message"], err
    assert fake_engine.params == []


def test_unknown_path_and_method(fake_client):
    assert error_of(fake_client.get("/v1/nothing"))["type"] == "not_found_error"
    assert fake_client.delete(CHAT).status_code == 405


def test_health_models_metrics_and_openapi(fake_client):
    assert fake_client.get("/health").json()["status"] == "ok"
    models = fake_client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "fake-pixtral"
    assert fake_client.get("/v1/models/fake-pixtral").status_code == 200
    assert fake_client.get("/v1/models/other").status_code == 404
    doc = fake_client.get("/openapi.json").json()
    assert "/v1/chat/completions" in doc["paths"]
    text = fake_client.get("/metrics").text
    assert "# TYPE pixtral_request_latency_seconds histogram" in text
    assert metric(text, "pixtral_running_generations") == 0


def test_health_is_503_until_the_engine_is_set():
    app = create_app(None, ServeSettings(access_log=False))
    with TestClient(app) as client:
        assert client.get("/health").status_code == 503
        r = client.post(CHAT, json={"messages": HELLO})
        assert r.status_code == 503 and error_of(r)["code"] == "model_loading"
        r = client.get("/v1/models")  # what `pixtral eval --wait-for-endpoint` polls
        assert r.status_code == 503 and error_of(r)["code"] == "model_loading"
        app.state.server.set_engine(FakeEngine())
        assert client.get("/health").status_code == 200
        assert client.get("/v1/models").json()["data"][0]["id"]


# --- images -------------------------------------------------------------------------------------------


def test_image_requests(fake_client):
    msg = image_message(data_url(png_bytes()), data_url(jpeg_bytes(), "image/jpeg"))
    r = fake_client.post(CHAT, json={"messages": [msg], "max_tokens": 2})
    assert r.status_code == 200, r.text
    # the bare-string form of image_url is accepted too
    msg = {"role": "user", "content": [{"type": "image_url", "image_url": data_url(png_bytes())}]}
    assert fake_client.post(CHAT, json={"messages": [msg], "max_tokens": 1}).status_code == 200


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        (data_url(png_header_only(50_000, 50_000)), "pixel"),
        (data_url(jpeg_bytes(256, 256)[:600], "image/jpeg"), "truncated"),
        ("data:text/plain;base64,aGVsbG8=", "not an image"),
        ("data:image/png;base64,aGVsbG8=", "not a readable image"),
        ("data:image/png;base64,@@@", "base64"),
        ("data:image/png,rawbytes", "base64"),
        ("http://example.com/cat.png", "disabled"),
        ("file:///etc/passwd", "disabled"),
        ("/etc/passwd", "disabled"),
        ("ftp://example.com/x.png", "scheme"),
    ],
)
def test_bad_images_are_clear_400(fake_client, url, needle):
    r = fake_client.post(CHAT, json={"messages": [image_message(url)], "max_tokens": 1})
    assert r.status_code == 400, r.text
    assert needle in error_of(r)["message"].lower()
    assert "messages[0].content[0]" in error_of(r)["message"]


def test_thousand_images_refused_before_decoding(fake_client):
    url = data_url(png_bytes(8, 8))
    t0 = time.perf_counter()
    r = fake_client.post(CHAT, json={"messages": [image_message(*[url] * 1000)]})
    assert r.status_code == 400
    assert "1000 images" in error_of(r)["message"]
    assert time.perf_counter() - t0 < 5


def test_local_media_only_below_allowed_dir(tmp_path):
    allowed = tmp_path / "media"
    allowed.mkdir()
    (allowed / "a.png").write_bytes(png_bytes())
    (tmp_path / "secret.png").write_bytes(png_bytes())
    (allowed / "link.png").symlink_to(tmp_path / "secret.png")
    app = create_app(FakeEngine(), ServeSettings(access_log=False, allowed_local_media_paths=(allowed,)))
    with TestClient(app) as client:

        def post(url):
            return client.post(CHAT, json={"messages": [image_message(url)], "max_tokens": 1})

        assert post(str(allowed / "a.png")).status_code == 200
        assert post((allowed / "a.png").as_uri()).status_code == 200
        assert post(str(tmp_path / "secret.png")).status_code == 403
        assert post(str(allowed / "link.png")).status_code == 403  # symlink out of the directory
        assert post(str(allowed / ".." / "secret.png")).status_code == 403
        assert post(str(allowed / "missing.png")).status_code == 400


# --- body size ------------------------------------------------------------------------------------------


def test_100mb_body_is_413_declared_and_chunked(fake_engine):
    app = create_app(fake_engine, ServeSettings(access_log=False))
    big = b"x" * (100 * 1024 * 1024)
    with live_server(app) as url:
        t0 = time.perf_counter()
        r = httpx.post(url + CHAT, content=big, headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"

        def chunks():
            for i in range(0, len(big), 1 << 20):
                yield big[i : i + (1 << 20)]

        try:
            r = httpx.post(
                url + CHAT, content=chunks(), headers={"content-type": "application/json"}, timeout=60
            )
            assert r.status_code == 413
        except httpx.HTTPError:
            pass  # the server may close the connection while the client still sends; no 5xx either way
        assert time.perf_counter() - t0 < 60
        assert httpx.get(url + "/health").status_code == 200


# --- auth -----------------------------------------------------------------------------------------------


def test_api_key(monkeypatch):
    monkeypatch.setenv("PIXTRAL_API_KEY", "s3cret")
    app = create_app(FakeEngine(), ServeSettings(access_log=False))
    with TestClient(app) as client:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "s3cret"},
            {"Authorization": "Basic s3cret"},
            {"Authorization": "Bearer s3cret-and-more"},
        ):
            r = client.post(CHAT, json={"messages": HELLO}, headers=headers)
            assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"
            assert client.get("/v1/models", headers=headers).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert client.post(CHAT, json={"messages": HELLO, "max_tokens": 1}, headers=ok).status_code == 200
        assert client.get("/v1/models", headers=ok).status_code == 200
        # the page, health and metrics stay open (the page asks for the key)
        assert client.get("/").status_code == 200
        assert client.get("/health").status_code == 200


# --- queueing -------------------------------------------------------------------------------------------


def test_queue_full_is_429_and_slots_come_back():
    engine = FakeEngine(delay_s=0.05)
    app = create_app(engine, ServeSettings(access_log=False, max_concurrency=1, max_queue=1))
    with live_server(app) as url:
        results = []

        def call():
            r = httpx.post(url + CHAT, json={"messages": HELLO, "max_tokens": 20}, timeout=30)
            results.append(r.status_code)

        threads = [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()
            time.sleep(0.01)
        for t in threads:
            t.join()
        assert sorted(results).count(200) >= 2 and 429 in results, results
        assert set(results) <= {200, 429}
        r = httpx.post(url + CHAT, json={"messages": HELLO, "max_tokens": 1}, timeout=30)
        assert r.status_code == 200
        text = httpx.get(url + "/metrics").text
        assert 'pixtral_rejected_requests_total{reason="queue_full"}' in text


def test_request_timeout_is_reported_and_stops_generation():
    engine = FakeEngine(delay_s=0.02)
    app = create_app(engine, ServeSettings(access_log=False, request_timeout_s=0.3))
    with TestClient(app) as client:
        r = client.post(CHAT, json={"messages": HELLO, "max_tokens": 1000})
        assert r.status_code == 504 and error_of(r)["code"] == "timeout"
        for _ in range(100):
            if engine.running == 0:
                break
            time.sleep(0.01)
        assert engine.running == 0


def test_client_disconnect_cancels_generation():
    engine = FakeEngine(delay_s=0.01)
    app = create_app(engine, ServeSettings(access_log=False))
    with live_server(app) as url:
        with httpx.stream(
            "POST", url + CHAT, json={"messages": HELLO, "max_tokens": 3000, "stream": True}
        ) as r:
            lines = r.iter_lines()
            for _ in range(5):
                next(lines)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = httpx.get(url + "/metrics").text
            if metric(text, "pixtral_running_generations") == 0 and engine.running == 0:
                break
            time.sleep(0.05)
        assert engine.running == 0
        assert metric(text, "pixtral_cancelled_generations_total") >= 1


def test_prompt_and_max_tokens_against_the_context(fake_client):
    r = fake_client.post(CHAT, json={"messages": [{"role": "user", "content": "hello " * 5000}]})
    assert r.status_code == 400 and "context" in error_of(r)["message"]
    r = fake_client.post(
        CHAT, json={"messages": [{"role": "user", "content": "hello " * 4000}], "max_tokens": 200}
    )
    assert r.status_code == 400
    err = error_of(r)
    assert err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"
    assert "maximum context length is 4096 tokens" in err["message"]
    # without max_tokens the answer is clipped to the context left
    r = fake_client.post(CHAT, json={"messages": [{"role": "user", "content": "hello " * 4000}]})
    assert r.status_code == 200 and r.json()["usage"]["total_tokens"] <= 4096
