"""Structured output and forced tool calls through the official `openai` client, against the live server and
the real engine on the tiny model (a random model: only the grammar makes its answers valid). Oracles:
`json` and `jsonschema` on what comes back."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

pytest.importorskip("xgrammar")

SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"enum": ["yes", "no"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "ok": {"type": "boolean"},
    },
    "required": ["answer", "count", "ok"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "rate", "description": "Rate it", "parameters": SCHEMA}},
    {
        "type": "function",
        "function": {
            "name": "pick",
            "parameters": {
                "type": "object",
                "properties": {"colour": {"enum": ["red", "blue"]}},
                "required": ["colour"],
                "additionalProperties": False,
            },
        },
    },
]
ASK = [{"role": "user", "content": "Is it good?"}]


def test_json_schema_answers_validate_at_temperature_1(client, model):
    fmt = {"type": "json_schema", "json_schema": {"name": "rating", "schema": SCHEMA, "strict": True}}
    texts = []
    r = client.chat.completions.create(
        model=model, messages=ASK, response_format=fmt, temperature=1.0, seed=1, n=4, max_tokens=40
    )
    for choice in r.choices:  # 100 seeded samples on a smaller vocabulary: tests/engine/test_structured.py
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
        texts.append(choice.message.content)
    assert len(set(texts)) > 2
    stream = client.chat.completions.create(
        model=model, messages=ASK, response_format=fmt, temperature=1.0, seed=7, max_tokens=30, stream=True
    )
    jsonschema.validate(
        json.loads("".join(c.choices[0].delta.content or "" for c in stream if c.choices)), SCHEMA
    )


def test_json_object_and_vllm_guided_extras(client, model, engine):
    tekken = engine.tokenizer.instruct_tokenizer.tokenizer
    (empty,) = tekken.encode("{}", bos=False, eos=False)  # one token: pushed up, the grammar lets it through
    r = client.chat.completions.create(
        model=model,
        messages=ASK,
        response_format={"type": "json_object"},
        logit_bias={str(empty): 60},
        max_tokens=10,
        temperature=0,
    )
    assert json.loads(r.choices[0].message.content) == {}
    r = client.completions.create(
        model=model,
        prompt="Colour:",
        max_tokens=10,
        temperature=1.0,
        seed=3,
        n=6,
        extra_body={"guided_choice": ["red", "light blue"]},
    )
    assert {c.text for c in r.choices} <= {"red", "light blue"}
    r = client.completions.create(
        model=model,
        prompt="Code:",
        max_tokens=10,
        temperature=1.0,
        seed=3,
        extra_body={"guided_regex": "[A-F]{4}"},
    )
    assert len(r.choices[0].text) == 4 and set(r.choices[0].text) <= set("ABCDEF")


def test_a_named_tool_choice_always_yields_a_call_whose_arguments_validate(client, model):
    choice = {"type": "function", "function": {"name": "rate"}}
    r = client.chat.completions.create(
        model=model,
        messages=ASK,
        tools=TOOLS,
        tool_choice=choice,
        temperature=1.0,
        seed=5,
        n=3,
        max_tokens=40,
    )
    for c in r.choices:
        (call,) = c.message.tool_calls
        assert call.function.name == "rate" and c.finish_reason == "stop" and not c.message.content
        jsonschema.validate(json.loads(call.function.arguments), SCHEMA)
    stream = list(
        client.chat.completions.create(
            model=model,
            messages=ASK,
            tools=TOOLS,
            tool_choice=choice,
            temperature=1.0,
            seed=5,
            max_tokens=40,
            stream=True,
        )
    )
    deltas = [
        t
        for c in stream
        if c.choices and c.choices[0].delta.tool_calls
        for t in c.choices[0].delta.tool_calls
    ]
    assert deltas[0].function.name == "rate"
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == json.loads(
        r.choices[0].message.tool_calls[0].function.arguments
    )


def test_tool_choice_required_calls_one_of_the_tools_with_valid_arguments(client, model, engine):
    # vLLM's "required" schema has no maxItems: a random model would add calls until max_tokens, so "]"
    # (allowed only once a call is complete) is pushed up.
    (end,) = engine.tokenizer.instruct_tokenizer.tokenizer.encode("]", bos=False, eos=False)
    r = client.chat.completions.create(
        model=model,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        temperature=1.0,
        seed=9,
        n=3,
        max_tokens=60,
        logit_bias={str(end): 30},
    )
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for c in r.choices:
        assert c.finish_reason == "tool_calls" and c.message.tool_calls, c
        for call in c.message.tool_calls:
            jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"response_format": {"type": "json_object"}, "extra_body": {"guided_regex": "a"}}, "both"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "nope"),
        ({"tool_choice": "required"}, "needs tools"),
        ({"extra_body": {"guided_regex": "(unclosed"}}, "regex"),
        ({"response_format": {"type": "json_object"}, "extra_body": {"ignore_eos": True}}, "ignore_eos"),
    ],
)
def test_conflicting_or_invalid_structured_requests_are_400(client, model, kwargs, needle):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=ASK, max_tokens=4, **kwargs)
    assert needle in str(info.value.body), info.value.body
