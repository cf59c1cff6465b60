"""Tools in the prompt (mistral-common is the oracle: same tokens and images for the same conversation) and
the model's [TOOL_CALLS] output parsed into OpenAI tool calls."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from mistral_common.protocol.instruct.chunk import ImageURLChunk, TextChunk
from mistral_common.protocol.instruct.messages import (
    AssistantMessage,
    SystemMessage,
    ToolMessage,
    UserMessage,
)
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.protocol.instruct.tool_calls import Function, FunctionCall, Tool, ToolCall

from pixtral.errors import InputError
from pixtral.prompt.chat import encode_chat
from pixtral.prompt.tool_calls import ToolCallStream, parse_tool_calls, split_tool_calls
from tests.prompt.prompt_helpers import data_url, encode, noise_image

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CLOCK = {"name": "get_time", "description": "The time", "parameters": {"type": "object", "properties": {}}}
TOOLS = [{"type": "function", "function": WEATHER}, {"type": "function", "function": CLOCK}]


def test_a_multi_turn_tool_conversation_with_an_image_encodes_as_mistral_common(tokenizer):
    url = data_url(encode(noise_image(48, 32, seed=1), "PNG"))
    calls = [
        {
            "id": "abcDEF123",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"id": "xyz987XYZ", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    ours = encode_chat(
        [
            {"role": "system", "content": "Use the tools."},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": "Where?"},
                ],
            },
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "abcDEF123", "content": "22C"},
            {"role": "tool", "tool_call_id": "xyz987XYZ", "content": [{"type": "text", "text": "noon"}]},
            {"role": "assistant", "content": "Sunny at noon."},
            {"role": "user", "content": "And tomorrow?"},
        ],
        tokenizer,
        tools=TOOLS,
    )
    theirs = tokenizer.encode_chat_completion(
        ChatCompletionRequest(
            messages=[
                SystemMessage(content="Use the tools."),
                UserMessage(content=[ImageURLChunk(image_url=url), TextChunk(text="Where?")]),
                AssistantMessage(
                    content=None,
                    tool_calls=[
                        ToolCall(
                            id="abcDEF123",
                            function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}'),
                        ),
                        ToolCall(id="xyz987XYZ", function=FunctionCall(name="get_time", arguments="{}")),
                    ],
                ),
                ToolMessage(content="22C", tool_call_id="abcDEF123"),
                ToolMessage(content="noon", tool_call_id="xyz987XYZ"),
                AssistantMessage(content="Sunny at noon."),
                UserMessage(content="And tomorrow?"),
            ],
            tools=[Tool(function=Function(**WEATHER)), Tool(function=Function(**CLOCK))],
        )
    )
    assert ours.token_ids == theirs.tokens
    assert len(ours.images) == 1 and np.array_equal(ours.images[0], theirs.images[0])
    text = tokenizer.instruct_tokenizer.tokenizer.decode(ours.token_ids, "keep")
    for marker in ("[AVAILABLE_TOOLS]", "[TOOL_CALLS]", "[TOOL_RESULTS]"):
        assert marker in text


@pytest.mark.parametrize(
    ("messages", "tools", "needle"),
    [
        ([{"role": "user", "content": "hi"}], [{"type": "function"}], "tool 0"),
        ([{"role": "user", "content": "hi"}], [{"type": "retrieval", "function": WEATHER}], "tool 0"),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "abcDEF123", "function": {}}]},
                {"role": "user", "content": "hi"},
            ],
            None,
            "message 1 (assistant) tool call 0",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "tool", "tool_call_id": "bad-id!!!", "content": "x"},
            ],
            None,
            "cannot be encoded",
        ),
    ],
)
def test_bad_tools_and_tool_messages_raise_input_error_naming_them(tokenizer, messages, tools, needle):
    with pytest.raises(InputError, match=re.escape(needle)):
        encode_chat(messages, tokenizer, tools=tools)


def ids_of(tokenizer, text_before: str, after: str) -> list[int]:
    tekken = tokenizer.instruct_tokenizer.tokenizer
    before = tekken.encode(text_before, bos=False, eos=False) if text_before else []
    return before + [tokenizer.instruct_tokenizer.TOOL_CALLS] + tekken.encode(after, bos=False, eos=False)


def test_generated_tool_calls_split_from_the_content(tokenizer):
    ids = ids_of(tokenizer, "Checking.", '[{"name": "get_weather", "arguments": {"city": "Zürich"}}]')
    content, calls = split_tool_calls(ids, tokenizer)
    assert content == "Checking."
    (call,) = calls
    assert re.fullmatch(r"[a-zA-Z0-9]{9}", call["id"]) and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Zürich"}
    assert split_tool_calls(ids[:3], tokenizer) == (
        tokenizer.instruct_tokenizer.tokenizer.decode(ids[:3]),
        None,
    )


@pytest.mark.parametrize("text", ["", "[]", "[{}]", '[{"name": 3}]', "{not json", '"text"'])
def test_what_is_not_a_list_of_calls_is_not_parsed(text):
    assert parse_tool_calls(text) is None


def test_streaming_split_sends_the_content_and_holds_the_calls_back(tokenizer):
    tekken = tokenizer.instruct_tokenizer.tokenizer
    ids = ids_of(tokenizer, "Let me see", '[{"name": "get_time", "arguments": {}}]')
    stream, sent = ToolCallStream(tokenizer), ""
    for token in ids:  # one token per delta, text as the engine's detokenizer gives it
        piece = "" if token < tekken.num_special_tokens else tekken.decode([token])
        sent += stream.feed(piece, [token])
    rest, calls = stream.finish()
    assert sent + rest == "Let me see" and calls[0]["function"] == {"name": "get_time", "arguments": "{}"}
