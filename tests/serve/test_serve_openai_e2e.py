"""The official `openai` client against the live server (uvicorn on 127.0.0.1) and the real engine on the
tiny model: plain and streamed, data-URL images, multi-turn, several images, n>1, seeds, usage."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from pixtral.engine import scheduler as scheduler_module
from pixtral.engine.sampling import SamplingParams
from pixtral.prompt.chat import encode_chat
from tests.serve.serve_helpers import data_url, image_message, jpeg_bytes, png_bytes, png_header_only

CHAT = "/v1/chat/completions"


def prompt_tokens(engine, messages) -> int:
    return len(encode_chat(messages, engine.tokenizer).token_ids)


def test_models(client, model, engine):
    card = client.models.retrieve(model)
    assert card.id == engine.model_name


def test_plain_completion_equals_engine_and_usage_matches_tokenizer(client, model, engine):
    messages = [{"role": "user", "content": "Name three colours."}]
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
    (choice,) = r.choices
    expected = engine.generate(messages, SamplingParams(max_tokens=8, temperature=0.0))
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert r.usage.prompt_tokens == prompt_tokens(engine, messages) == expected.prompt_tokens
    assert r.usage.completion_tokens == len(expected.token_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.object == "chat.completion" and r.model == model


def test_streamed_equals_plain_with_usage(client, model, engine):
    messages = [{"role": "user", "content": "Count to five."}]
    plain = client.chat.completions.create(model=model, messages=messages, max_tokens=10, temperature=0)
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert len({c.id for c in chunks}) == 1


def test_max_completion_tokens_and_stop(client, model):
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=3, temperature=0
    )
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
    full = r.choices[0].message.content
    stop = full.strip()[:2] if len(full.strip()) >= 2 else None
    if stop:
        r = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=3,
            temperature=0,
            stop=[stop],
        )
        assert stop not in r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop"


def test_images_as_data_urls_multi_turn_and_usage(client, model, engine):
    png, jpg = data_url(png_bytes(48, 32, seed=1)), data_url(jpeg_bytes(40, 40, seed=2), "image/jpeg")
    messages = [
        {"role": "system", "content": "You are terse."},
        image_message(png, text="What is this?"),
        {"role": "assistant", "content": "A picture."},
        image_message(jpg, png, text="And these two?"),
    ]
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=4, temperature=0)
    assert r.usage.prompt_tokens == prompt_tokens(engine, messages)
    assert r.usage.prompt_tokens > 3 * 6  # three images of at least 2x3 patches each
    expected = engine.generate(messages, SamplingParams(max_tokens=4))
    assert r.choices[0].message.content == expected.text


def test_n_choices_and_seed_reproducibility(client, model):
    kwargs = dict(
        model=model,
        messages=[{"role": "user", "content": "Tell a story."}],
        max_tokens=6,
        temperature=1.0,
        top_p=0.95,
        n=3,
    )
    a = client.chat.completions.create(seed=1234, **kwargs)
    b = client.chat.completions.create(seed=1234, **kwargs)
    c = client.chat.completions.create(seed=999, **kwargs)
    texts = lambda r: [ch.message.content for ch in r.choices]  # noqa: E731
    assert [ch.index for ch in a.choices] == [0, 1, 2]
    assert texts(a) == texts(b)
    assert texts(a) != texts(c)
    assert len(set(texts(a))) > 1  # choices are drawn independently
    assert a.usage.completion_tokens == sum(6 for _ in a.choices)
    streamed = client.chat.completions.create(seed=1234, stream=True, **kwargs)
    parts = ["", "", ""]
    for chunk in streamed:
        for ch in chunk.choices:
            parts[ch.index] += ch.delta.content or ""
    assert parts == texts(a)


# --- hostile input through the official client: each a clear 4xx -----------------------------------------


def expect_400(client, model, messages, needle, **kwargs) -> dict:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=messages, max_tokens=2, **kwargs)
    message = info.value.body["message"] if isinstance(info.value.body, dict) else str(info.value)
    assert needle in message.lower(), message
    return info.value.body


def test_decompression_bomb_header_refused(client, model):
    expect_400(client, model, [image_message(data_url(png_header_only(50_000, 50_000)))], "pixels")


def test_truncated_jpeg_refused(client, model):
    expect_400(
        client, model, [image_message(data_url(jpeg_bytes(300, 300)[:700], "image/jpeg"))], "truncated"
    )


def test_non_image_data_url_refused(client, model):
    expect_400(client, model, [image_message("data:application/pdf;base64,JVBERi0xLjQK")], "not an image")


def test_thousand_images_refused(client, model):
    url = data_url(png_bytes(4, 4))
    expect_400(client, model, [image_message(*[url] * 1000)], "1000 images")


def test_prompt_over_context_refused(client, model, engine):
    words = engine.max_context + 100
    text = "hello " * words
    error = expect_400(client, model, [{"role": "user", "content": text}], "context")
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"


def test_100mb_body_refused(live_url):
    body = b'{"messages": [{"role": "user", "content": "' + b"a" * (100 * 1024 * 1024) + b'"}]}'
    r = httpx.post(
        live_url + "/v1/chat/completions",
        content=body,
        timeout=60,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    assert "larger than" in r.json()["error"]["message"]


def test_a_request_failing_in_its_decode_step_gets_an_error_and_its_neighbours_200(
    live_url, engine, monkeypatch
):
    sample_batch, poison_seed, poisoned_draws = scheduler_module.sample_batch, 4242, []

    def faulty_sample_batch(logits, rows, generators):  # the poisoned request fails mid-decode, batched
        if any(p.seed == poison_seed for p in rows):
            poisoned_draws.append(engine.scheduler.n_running)
            if len(poisoned_draws) >= 3 and engine.scheduler.n_running >= 4:
                raise RuntimeError("injected fault")
        return sample_batch(logits, rows, generators)

    monkeypatch.setattr(scheduler_module, "sample_batch", faulty_sample_batch)
    bodies = [
        {
            "messages": [{"role": "user", "content": f"Tell me about the number {i}."}],
            "max_tokens": 300 if i == 2 else 30,
            "temperature": 0.8,
            "seed": poison_seed if i == 2 else i,
        }
        for i in range(5)
    ]
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda b: httpx.post(live_url + CHAT, json=b, timeout=120), bodies))
    poisoned = responses.pop(2)
    assert 400 <= poisoned.status_code < 600 and poisoned.json()["error"]["message"], poisoned.text
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    assert all(r.json()["usage"]["completion_tokens"] > 0 for r in responses)
