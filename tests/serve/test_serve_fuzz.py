"""Hostile-input fuzzing: at least 10,000 generated requests against the app on the real engine (tiny
model) through an in-process ASGI client. Every answer must be < 500 and, when an error, OpenAI-shaped;
the server must still be healthy afterwards and no generation may be left running.

Generation limits are set low (max_tokens <= 2) so that the requests that do reach the engine stay fast.
"""

from __future__ import annotations

import json
import string

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixtral.serve import ServeSettings, create_app
from tests.serve.serve_helpers import data_url, jpeg_bytes, metric, png_bytes, png_header_only

COUNTS = {"requests": 0, "ok": 0}
TARGET = {"json": 2500, "structured": 4000, "near_valid": 1500, "raw": 2000}
FUZZ = settings(
    deadline=None, database=None, derandomize=True, print_blob=True, suppress_health_check=list(HealthCheck)
)


@pytest.fixture(scope="module")
def fuzz_client(engine):
    app = create_app(
        engine,
        ServeSettings(
            access_log=False,
            max_tokens_limit=2,
            default_max_tokens=1,
            max_n=2,
            max_images_per_request=4,
            request_timeout_s=30,
        ),
    )
    with TestClient(app, raise_server_exceptions=True) as client:
        yield client


def check(response) -> None:
    COUNTS["requests"] += 1
    assert response.status_code < 500, (response.status_code, response.text[:500])
    is_json = response.headers.get("content-type", "").startswith("application/json")
    if response.status_code >= 400 and is_json and response.content:
        error = response.json()["error"]
        assert error["message"] and error["type"]
    elif response.status_code == 200:
        COUNTS["ok"] += 1


leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
json_any = st.recursive(
    leaf,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=12,
)

URLS = st.sampled_from(
    [
        data_url(png_bytes(8, 8)),
        data_url(jpeg_bytes(16, 16), "image/jpeg"),
        data_url(png_header_only(50_000, 50_000)),
        data_url(png_header_only(0, 0)),
        data_url(png_header_only(1, 2**31 - 1)),
        data_url(jpeg_bytes(64, 64)[:300], "image/jpeg"),
        "data:text/html;base64,PGh0bWw+",
        "data:image/png;base64,",
        "data:image/png;base64,!!!!",
        "data:image/svg+xml;base64,PHN2Zy8+",
        "data:,",
        "data:",
        "http://127.0.0.1/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "https://example.com/a.png",
        "file:///etc/passwd",
        "/etc/passwd",
        "../../etc/shadow",
        "C:\\Windows\\win.ini",
        "javascript:alert(1)",
        "",
    ]
) | st.text(max_size=30)

part = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=40) | json_any}),
    st.fixed_dictionaries(
        {
            "type": st.just("image_url"),
            "image_url": st.fixed_dictionaries({"url": URLS}, optional={"detail": json_any})
            | URLS
            | json_any,
        }
    ),
    st.fixed_dictionaries(
        {"type": st.text(max_size=8) | json_any}, optional={"text": json_any, "image": json_any}
    ),
    json_any,
)
content = st.text(max_size=60) | st.lists(part, max_size=4) | json_any
role = (
    st.sampled_from(["user", "user", "user", "system", "assistant", "developer", "tool", "USER", ""])
    | json_any
)
message = st.fixed_dictionaries({"role": role}, optional={"content": content, "name": json_any})
user_message = st.fixed_dictionaries({"role": st.just("user"), "content": content})
messages = st.one_of(
    st.lists(message, max_size=4).flatmap(lambda ms: user_message.map(lambda u: [*ms, u])),
    st.lists(message, max_size=4),
    json_any,
)
number = st.integers(-3, 10**12) | st.floats() | json_any
OPTIONAL = {
    "model": st.sampled_from(["gpt-4o", ""]) | json_any,
    "max_tokens": st.integers(-2, 4) | number,
    "max_completion_tokens": st.integers(-2, 4) | number,
    "temperature": st.floats(-1, 3) | number,
    "top_p": st.floats(-0.5, 1.5) | number,
    "top_k": st.integers(-3, 2**40) | number,
    "seed": st.integers(-(2**65), 2**65) | number,
    "stop": st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=20) | json_any,
    "n": st.integers(-1, 4) | number,
    "stream": st.booleans() | json_any,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | json_any})
    | json_any,
    "logprobs": st.booleans() | json_any,
    "top_logprobs": number,
    "frequency_penalty": number,
    "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}) | json_any,
    "tools": json_any,
    "user": json_any,
}
request = st.fixed_dictionaries({"messages": messages}, optional=OPTIONAL)

# Near-valid requests: a well-formed conversation (text, maybe a small valid image) with one field drawn
# from the hostile values above, so that a good share of requests reaches the engine.
valid_user = st.sampled_from(
    [
        {"role": "user", "content": "Hello"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe"},
                {"type": "image_url", "image_url": {"url": data_url(png_bytes(16, 16))}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": data_url(jpeg_bytes(20, 12), "image/jpeg")}],
        },
    ]
)
valid_base = st.builds(
    lambda system, user: {
        "messages": ([{"role": "system", "content": system}] if system else []) + [user],
        "max_tokens": 1,
    },
    st.sampled_from(["", "Be brief."]) | st.text(max_size=10),
    valid_user,
)
one_field = st.one_of([st.fixed_dictionaries({k: v}) for k, v in OPTIONAL.items()])
# Two in three near-valid requests are left whole, so that the engine's path is exercised hundreds of times.
near_valid = st.builds(
    lambda base, extra, whole: base if whole else {**base, **extra},
    valid_base,
    one_field,
    st.sampled_from([True, True, False]),
)


def post_json(client, payload) -> None:
    body = json.dumps(payload, allow_nan=True).encode("utf-8", "surrogatepass")
    check(client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"}))


@given(payload=json_any)
def fuzz_arbitrary_json(client, payload):
    post_json(client, payload)


@given(payload=request)
def fuzz_structured(client, payload):
    post_json(client, payload)


@given(payload=near_valid)
def fuzz_near_valid(client, payload):
    post_json(client, payload)


PATHS = st.sampled_from(
    [
        "/v1/chat/completions",
        "/v1/models",
        "/health",
        "/metrics",
        "/",
        "/v1/models/x",
        "/static/app.js",
        "/static/../settings.py",
        "/openapi.json",
        "/v1/completions",
    ]
)
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "",
        "application/json; charset=latin-1",
    ]
)


@given(
    method=METHODS,
    path=PATHS | st.text(string.ascii_letters + "/%.-_~", max_size=20).map(lambda s: "/" + s),
    body=st.binary(max_size=200),
    content_type=CONTENT_TYPES,
)
def fuzz_raw(client, method, path, body, content_type):
    headers = {"content-type": content_type} if content_type else {}
    check(
        client.request(method, path, content=body if method not in ("GET", "HEAD") else None, headers=headers)
    )


@pytest.mark.parametrize("name", list(TARGET))
def test_fuzz(fuzz_client, name):
    before, ok_before = COUNTS["requests"], COUNTS["ok"]
    fn = {
        "json": fuzz_arbitrary_json,
        "structured": fuzz_structured,
        "near_valid": fuzz_near_valid,
        "raw": fuzz_raw,
    }[name]
    settings(FUZZ, max_examples=TARGET[name])(fn)(fuzz_client)
    assert COUNTS["requests"] - before >= TARGET[name] * 0.95
    if name == "near_valid":  # the engine answered a fair share of these, not just the validators
        assert COUNTS["ok"] - ok_before >= TARGET[name] * 0.4, COUNTS


def test_fuzz_totals_and_health(fuzz_client):
    print("fuzz counts:", COUNTS)
    assert COUNTS["requests"] >= 10_000, COUNTS
    assert fuzz_client.get("/health").json()["status"] == "ok"
    text = fuzz_client.get("/metrics").text
    assert metric(text, "pixtral_running_generations") == 0
    assert metric(text, "pixtral_queued_requests") == 0
    assert 'status="500"' not in text
    r = fuzz_client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
