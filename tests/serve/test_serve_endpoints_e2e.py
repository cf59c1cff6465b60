"""/v1/completions (the official `openai` client), /tokenize, /detokenize and /version (vLLM's shapes) against
the live server and the real engine on the tiny model. Oracles: mistral-common's own encoding and the
engine's slow reference path."""

from __future__ import annotations

import importlib.metadata

import httpx
import openai
import pytest
import torch

from pixtral.engine.generate import decode_steps
from pixtral.engine.sampling import SamplingParams
from pixtral.prompt.chat import encode_chat
from tests.serve.serve_helpers import data_url, image_message, png_bytes

PROMPT = "The capital of France is"


def tekken(engine):
    return engine.tokenizer.instruct_tokenizer.tokenizer


def reference(engine, ids: list[int], params: SamplingParams):
    stop = params.stop_ids(engine.eos_id)
    return [s for s in decode_steps(engine.model, ids, [], params, stop) if s.token_id not in stop]


def test_completion_of_raw_text_equals_the_reference_path_with_bos_and_usage(client, model, engine):
    ids = tekken(engine).encode(PROMPT, bos=True, eos=False)
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=7, temperature=0)
    steps = reference(engine, ids, SamplingParams(max_tokens=7))
    (choice,) = r.choices
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert choice.text == tekken(engine).decode([s.token_id for s in steps])
    assert choice.finish_reason == "length" and choice.logprobs is None
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 7
    by_ids = client.completions.create(model=model, prompt=ids, max_tokens=7, temperature=0)
    assert by_ids.choices[0].text == choice.text


def test_completion_default_max_tokens_is_16_as_openai(client, model):
    r = client.completions.create(model=model, prompt=PROMPT, temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 16


def test_completion_logprobs_plain_and_streamed(client, model, engine):
    ids = tekken(engine).encode(PROMPT, bos=True, eos=False)
    steps = reference(engine, ids, SamplingParams(max_tokens=6))
    kwargs = dict(model=model, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
    r = client.completions.create(**kwargs)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(steps) == 6
    for i, step in enumerate(steps):
        logp = torch.log_softmax(step.logits.double(), -1)
        assert abs(lp.token_logprobs[i] - logp[step.token_id].item()) <= 1e-5
        top = logp.topk(3)
        assert len(lp.top_logprobs[i]) in (3, 4)  # the chosen token is always there (OpenAI: up to k + 1)
        assert lp.top_logprobs[i][lp.tokens[i]] == pytest.approx(logp[step.token_id].item(), abs=1e-5)
        assert sorted(lp.top_logprobs[i].values(), reverse=True)[:3] == pytest.approx(
            top.values.tolist(), abs=1e-5
        )
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    stream = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].text for c in stream if c.choices)
    assert text == r.choices[0].text
    tokens = [t for c in stream if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    offsets = [
        o for c in stream if c.choices and c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset
    ]
    assert tokens == lp.tokens and offsets == lp.text_offset
    assert [c.choices[0].finish_reason for c in stream if c.choices][-1] == "length"
    assert stream[-1].usage == r.usage and all(c.object == "text_completion" for c in stream)


def test_completion_refuses_what_it_would_not_honour(client, model):
    for kwargs, param in [({"echo": True}, "echo"), ({"suffix": "x"}, "suffix"), ({"best_of": 2}, "best_of")]:
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model=model, prompt=PROMPT, max_tokens=2, **kwargs)
        assert info.value.body["param"] == param
    with pytest.raises(openai.BadRequestError, match="one prompt"):
        client.completions.create(model=model, prompt=["a", "b"], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="vocabulary"):
        client.completions.create(model=model, prompt=[1, 10**7], max_tokens=2)


def test_tokenize_text_and_chat_with_an_image_as_mistral_common(live_url, engine):
    r = httpx.post(live_url + "/tokenize", json={"prompt": PROMPT, "return_token_strs": True}).json()
    ids = tekken(engine).encode(PROMPT, bos=True, eos=False)
    assert r["tokens"] == ids and r["count"] == len(ids) and r["max_model_len"] == engine.max_context
    assert r["token_strs"][0] == "<s>" and "".join(r["token_strs"][1:]) == PROMPT
    r = httpx.post(live_url + "/tokenize", json={"prompt": PROMPT, "add_special_tokens": False}).json()
    assert r["tokens"] == ids[1:] and r["token_strs"] is None
    messages = [
        {"role": "system", "content": "Be brief."},
        image_message(data_url(png_bytes(40, 24, seed=2)), text="What is it?"),
    ]
    r = httpx.post(live_url + "/tokenize", json={"messages": messages}).json()
    assert r["tokens"] == encode_chat(messages, engine.tokenizer).token_ids
    assert r["tokens"].count(engine.model.config.vision.image_token_id) == 3 * 2  # 40x24 px: 3x2 patches


def test_tokenize_refusals(live_url):
    both = {"prompt": "x", "messages": [{"role": "user", "content": "x"}]}
    for body, needle in [
        (both, "either"),
        ({}, "either"),
        (
            {"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": False},
            "add_generation_prompt",
        ),
        ({"prompt": "x", "model": "other"}, "other"),
    ]:
        r = httpx.post(live_url + "/tokenize", json=body)
        assert r.status_code in (400, 404) and needle in r.text, r.text


def test_detokenize_inverts_tokenize_and_refuses_ids_outside_the_vocabulary(live_url):
    text = "Héllo, wörld 🎉"
    ids = httpx.post(live_url + "/tokenize", json={"prompt": text}).json()["tokens"]
    r = httpx.post(live_url + "/detokenize", json={"tokens": ids})
    assert r.status_code == 200 and r.json() == {"prompt": text}  # BOS is a control token: no text
    r = httpx.post(live_url + "/detokenize", json={"tokens": [5, 10**7]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"


def test_version(live_url):
    assert httpx.get(live_url + "/version").json() == {"version": importlib.metadata.version("pixtral")}
