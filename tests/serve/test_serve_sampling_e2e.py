"""Sampling controls and logprobs through the official `openai` client, against the live server and the real
engine on the tiny model. Oracles: the engine's slow reference path (`decode_steps`: its raw logits and
tokens) and the tokenizer's own bytes for each token."""

from __future__ import annotations

import openai
import pytest
import torch

from pixtral.engine.generate import decode_steps
from pixtral.engine.sampling import SamplingParams
from pixtral.prompt.detokenize import token_bytes
from tests.serve.serve_helpers import data_url, image_message, png_bytes

MESSAGES = [image_message(data_url(png_bytes(32, 32, seed=3)), text="What is in the picture?")]


def reference_steps(engine, messages, params: SamplingParams):
    prompt = engine.encode(messages)
    images = [torch.from_numpy(im) for im in prompt.images]
    stop = params.stop_ids(engine.eos_id)
    return [
        s
        for s in decode_steps(engine.model, prompt.token_ids, images, params, stop)
        if s.token_id not in stop
    ]


def check_logprobs(engine, content, steps, k: int) -> None:
    assert len(content) == len(steps)
    for entry, step in zip(content, steps, strict=True):
        logp = torch.log_softmax(step.logits.double(), -1)
        assert bytes(entry.bytes) == token_bytes(engine.tokenizer, step.token_id)
        assert entry.token == bytes(entry.bytes).decode("utf-8", errors="replace")
        assert abs(entry.logprob - logp[step.token_id].item()) <= 1e-5
        top = logp.topk(k)
        assert len(entry.top_logprobs) == k
        for alt, i, lp in zip(entry.top_logprobs, top.indices.tolist(), top.values.tolist(), strict=True):
            assert bytes(alt.bytes) == token_bytes(engine.tokenizer, i) and abs(alt.logprob - lp) <= 1e-5


def test_logprobs_equal_the_log_softmax_of_the_engine_logits_plain_and_streamed(client, model, engine):
    kwargs = dict(model=model, messages=MESSAGES, max_tokens=8, temperature=0, logprobs=True, top_logprobs=5)
    steps = reference_steps(engine, MESSAGES, SamplingParams(max_tokens=8))
    r = client.chat.completions.create(**kwargs)
    (choice,) = r.choices
    check_logprobs(engine, choice.logprobs.content, steps, 5)
    assert "".join(e.token for e in choice.logprobs.content) == choice.message.content
    streamed = list(client.chat.completions.create(stream=True, **kwargs))
    content = [
        e for c in streamed if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content
    ]
    check_logprobs(engine, content, steps, 5)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == choice.message.content


def test_logprobs_are_the_raw_ones_whatever_the_temperature_and_penalties(client, model, engine):
    """vLLM's default (raw_logprobs): before logit_bias, penalties and temperature."""
    params = SamplingParams(max_tokens=6, temperature=1.7, seed=11, repetition_penalty=1.4, logprobs=2)
    steps = reference_steps(engine, MESSAGES, params)
    r = client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        max_tokens=6,
        temperature=1.7,
        seed=11,
        logprobs=True,
        top_logprobs=2,
        extra_body={"repetition_penalty": 1.4},
    )
    assert [e.bytes for e in r.choices[0].logprobs.content] == [
        list(token_bytes(engine.tokenizer, s.token_id)) for s in steps
    ]
    check_logprobs(engine, r.choices[0].logprobs.content, steps, 2)
    plain = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=6, temperature=0)
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize(
    ("request_fields", "params"),
    [
        (
            {"presence_penalty": -2.0, "frequency_penalty": -2.0},
            SamplingParams(presence_penalty=-2.0, frequency_penalty=-2.0),
        ),
        ({"extra_body": {"repetition_penalty": 0.2}}, SamplingParams(repetition_penalty=0.2)),
        (
            {"temperature": 0.1, "seed": 5, "extra_body": {"min_p": 0.9}},
            SamplingParams(temperature=0.1, seed=5, min_p=0.9),
        ),
        ({"logit_bias": {"1100": 30, "1200": 25}}, SamplingParams(logit_bias={1100: 30.0, 1200: 25.0})),
    ],
    ids=["presence-frequency", "repetition", "min-p", "logit-bias"],
)
def test_each_sampling_control_gives_the_reference_paths_tokens(
    client, model, engine, request_fields, params
):
    fields = {"temperature": 0, **request_fields}
    params = SamplingParams(**{**params.__dict__, "max_tokens": 10})
    r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=10, logprobs=True, **fields)
    steps = reference_steps(engine, MESSAGES, params)
    got = [e.bytes for e in r.choices[0].logprobs.content]
    assert got == [list(token_bytes(engine.tokenizer, s.token_id)) for s in steps]
    plain = reference_steps(
        engine, MESSAGES, SamplingParams(max_tokens=10, temperature=params.temperature, seed=params.seed)
    )
    assert [s.token_id for s in plain] != [s.token_id for s in steps]  # the control really changed the output


def test_ignore_eos_min_tokens_and_stop_token_ids(client, model, engine):
    eos = str(engine.eos_id)
    forced = dict(model=model, messages=MESSAGES, max_tokens=5, temperature=0, logit_bias={eos: 100})
    r = client.chat.completions.create(**forced)
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == 0
    r = client.chat.completions.create(**forced, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    r = client.chat.completions.create(**forced, extra_body={"min_tokens": 3})
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == 3
    free = reference_steps(engine, MESSAGES, SamplingParams(max_tokens=8))
    stop_at = free[4].token_id
    r = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=8, temperature=0, extra_body={"stop_token_ids": [stop_at]}
    )
    first = [s.token_id for s in free].index(stop_at)
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == first


def test_out_of_vocabulary_bias_is_a_400_naming_it(client, model):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2, logit_bias={"999999": 1})
    assert info.value.body["param"] == "logit_bias"
