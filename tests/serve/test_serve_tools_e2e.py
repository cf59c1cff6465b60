"""Function calling through the official `openai` client against the live server and the real engine on the
tiny model. A random model never calls a tool, so the calls are scripted: the scheduler's sampler is replaced,
for requests with a marked seed, by one that emits exactly the tokens mistral-common encodes for an assistant
turn with tool calls. Oracle for the prompts: mistral-common's own encoding of the same conversation."""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest
import torch
from mistral_common.protocol.instruct.messages import AssistantMessage, ToolMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.protocol.instruct.tool_calls import Function, FunctionCall, Tool, ToolCall

from pixtral.engine import scheduler as scheduler_module
from pixtral.engine.sampling import SamplingParams

SCRIPTED_SEED = 424242
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TOOLS = [{"type": "function", "function": WEATHER}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def mistral_tools() -> list[Tool]:
    return [Tool(function=Function(**WEATHER))]


@pytest.fixture
def script(engine, monkeypatch):
    """`script(text_before, calls_json)`: requests seeded SCRIPTED_SEED generate `text_before`, then
    [TOOL_CALLS] and `calls_json`, then EOS."""
    tekken = engine.tokenizer.instruct_tokenizer.tokenizer
    tokens: list[int] = []
    positions: dict[int, int] = {}
    real = scheduler_module.sample_batch

    def set_script(before: str, calls_json: str) -> None:
        tokens[:] = tekken.encode(before, bos=False, eos=False) if before else []
        tokens.append(engine.tokenizer.instruct_tokenizer.TOOL_CALLS)
        tokens.extend(tekken.encode(calls_json, bos=False, eos=False) + [engine.eos_id])
        positions.clear()

    def scripted(logits, rows, generators):  # the scripted rows' tokens replace the drawn ones
        drawn = real(logits, rows, generators).tolist()
        for i, (params, generator) in enumerate(zip(rows, generators, strict=True)):
            if params.seed == SCRIPTED_SEED:
                at = positions.get(id(generator), 0)
                positions[id(generator)] = at + 1
                drawn[i] = tokens[min(at, len(tokens) - 1)]
        return torch.tensor(drawn)

    monkeypatch.setattr(scheduler_module, "sample_batch", scripted)
    return set_script


CALL_JSON = '[{"name": "get_weather", "arguments": {"city": "Paris"}}]'


def test_a_tool_call_is_parsed_into_openai_tool_calls_plain_and_streamed(client, model, script):
    script("Let me check.", CALL_JSON)
    kwargs = dict(model=model, messages=ASK, tools=TOOLS, max_tokens=60, temperature=1.0, seed=SCRIPTED_SEED)
    r = client.chat.completions.create(**kwargs)
    (choice,) = r.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    (call,) = choice.message.tool_calls
    assert re.fullmatch(r"[a-zA-Z0-9]{9}", call.id) and call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}

    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    deltas = [
        t
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
        for t in c.choices[0].delta.tool_calls
    ]
    assert content == "Let me check."
    assert deltas[0].function.name == "get_weather" and re.fullmatch(r"[a-zA-Z0-9]{9}", deltas[0].id)
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert json.loads(arguments) == {"city": "Paris"} and {d.index for d in deltas} == {0}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"
    ]


def test_two_calls_at_once(client, model, script):
    script(
        "",
        '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_weather", "arguments": {"city": "Rome"}}]',
    )
    r = client.chat.completions.create(
        model=model, messages=ASK, tools=TOOLS, max_tokens=80, temperature=1.0, seed=SCRIPTED_SEED
    )
    calls = r.choices[0].message.tool_calls
    assert [json.loads(c.function.arguments)["city"] for c in calls] == ["Paris", "Rome"]
    assert len({c.id for c in calls}) == 2 and r.choices[0].message.content is None


def test_tool_choice_none_and_unparsable_calls_come_back_as_text(client, model, script):
    script("", CALL_JSON)
    kwargs = dict(model=model, messages=ASK, tools=TOOLS, max_tokens=60, temperature=1.0, seed=SCRIPTED_SEED)
    r = client.chat.completions.create(tool_choice="none", **kwargs)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content == CALL_JSON
    assert r.choices[0].finish_reason == "stop"
    script("", '[{"name": "get_weather", "arguments": {"city": "Par')
    r = client.chat.completions.create(**kwargs)
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content == '[{"name": "get_weather", "arguments": {"city": "Par'


def test_a_full_round_trip_encodes_as_mistral_common(client, model, engine, script, live_url):
    """call -> tool result -> answer: the conversation the client sends back, with the call the server
    returned, is the prompt mistral-common encodes for the same conversation."""
    script("", CALL_JSON)
    r = client.chat.completions.create(
        model=model, messages=ASK, tools=TOOLS, max_tokens=60, temperature=1.0, seed=SCRIPTED_SEED
    )
    call = r.choices[0].message.tool_calls[0]
    history = ASK + [
        r.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 22, "sky": "sunny"}'},
    ]
    answer = client.chat.completions.create(
        model=model, messages=history, tools=TOOLS, max_tokens=5, temperature=0
    )

    reference = engine.tokenizer.encode_chat_completion(
        ChatCompletionRequest(
            messages=[
                UserMessage(content=ASK[0]["content"]),
                AssistantMessage(
                    content=None,
                    tool_calls=[
                        ToolCall(
                            id=call.id, function=FunctionCall(name="get_weather", arguments={"city": "Paris"})
                        )
                    ],
                ),
                ToolMessage(content='{"temperature": 22, "sky": "sunny"}', tool_call_id=call.id),
            ],
            tools=mistral_tools(),
        )
    ).tokens
    tokenized = httpx.post(live_url + "/tokenize", json={"messages": history, "tools": TOOLS}).json()[
        "tokens"
    ]
    assert tokenized == reference
    assert "[TOOL_RESULTS]" in engine.tokenizer.instruct_tokenizer.tokenizer.decode(reference, "keep")
    assert answer.usage.prompt_tokens == len(reference)
    expected = engine.generate(history, SamplingParams(max_tokens=5), tools=TOOLS)
    assert answer.choices[0].message.content == expected.text


def test_openai_style_long_call_ids_keep_their_last_nine_characters_as_vllm(live_url, engine):
    history = ASK + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0123456789abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0123456789abc", "content": "sunny"},
    ]
    r = httpx.post(live_url + "/tokenize", json={"messages": history, "tools": TOOLS})
    assert r.status_code == 200, r.text
    text = engine.tokenizer.instruct_tokenizer.tokenizer.decode(r.json()["tokens"])
    assert '"call_id": "456789abc"' in text and '"id": "456789abc"' in text


def test_malformed_tools_and_tool_messages_are_400(client, model):
    cases = [
        (dict(messages=ASK, tools=[{"type": "function", "function": {"name": "bad name!"}}]), "name"),
        (dict(messages=ASK + [{"role": "tool", "content": "x"}]), "tool_call_id"),
        (dict(messages=ASK, tool_choice="required"), "needs tools"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=model, max_tokens=2, **kwargs)
        assert needle in str(info.value.body), info.value.body
