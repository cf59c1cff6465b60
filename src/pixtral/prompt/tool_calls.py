"""The model's tool calls -> OpenAI `tool_calls`.

Pixtral (tekken v3, like Mistral NeMo) answers a call with [TOOL_CALLS] followed by a JSON list of
{"name": ..., "arguments": {...}} objects, then EOS (the reverse of what mistral-common encodes for an
assistant turn with tool calls). `split_tool_calls` cuts the generated ids at [TOOL_CALLS]: the text before
is the message's content, the JSON after becomes calls with fresh 9-character ids (mistral-common's id
format, so the calls can be sent back in the next turn as they are). Output that does not parse as calls is
returned as plain content, as vLLM does.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Sequence
from typing import Any

from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from pixtral.prompt.chat import TOOL_CALL_ID_LENGTH

_ID_ALPHABET = string.ascii_letters + string.digits


def new_tool_call_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(TOOL_CALL_ID_LENGTH))


def tool_calls_token(tokenizer: MistralTokenizer) -> int:
    return int(tokenizer.instruct_tokenizer.TOOL_CALLS)


def parse_tool_calls(text: str) -> list[dict[str, Any]] | None:
    """The JSON after [TOOL_CALLS] -> [{"id", "type": "function", "function": {"name", "arguments"}}] with
    arguments as a JSON string; None when it is not a list of {"name", "arguments"} objects."""
    try:
        data, _ = json.JSONDecoder().raw_decode(text.strip())
    except json.JSONDecodeError:
        return None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        return None
    calls = []
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = item.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        calls.append(
            {
                "id": new_tool_call_id(),
                "type": "function",
                "function": {"name": item["name"], "arguments": arguments},
            }
        )
    return calls


def split_tool_calls(
    token_ids: Sequence[int], tokenizer: MistralTokenizer
) -> tuple[str, list[dict[str, Any]] | None]:
    """Generated ids -> (content, tool calls or None)."""
    tekken = tokenizer.instruct_tokenizer.tokenizer
    marker = tool_calls_token(tokenizer)
    ids = list(token_ids)
    if marker not in ids:
        return tekken.decode(ids), None
    at = ids.index(marker)
    content, after = tekken.decode(ids[:at]), tekken.decode(ids[at + 1 :])
    calls = parse_tool_calls(after)
    if calls is None:
        return content + after, None
    return content, calls


class ToolCallStream:
    """Streams content until [TOOL_CALLS] appears, then holds the rest back; `finish` returns the content
    not sent yet and the calls (None when the output holds no valid calls)."""

    def __init__(self, tokenizer: MistralTokenizer) -> None:
        self._tokenizer = tokenizer
        self._marker = tool_calls_token(tokenizer)
        self._ids: list[int] = []
        self._sent = ""
        self._calling = False

    def feed(self, text: str, token_ids: Sequence[int]) -> str:
        """A delta of the engine (its text and ids) -> the content to send now."""
        self._ids += token_ids
        if self._calling:
            return ""
        if self._marker in token_ids:
            self._calling = True
            tekken = self._tokenizer.instruct_tokenizer.tokenizer
            content = tekken.decode(self._ids[: self._ids.index(self._marker)])
            out = content[len(self._sent) :] if content.startswith(self._sent) else ""
            self._sent += out
            return out
        self._sent += text
        return text

    def finish(self) -> tuple[str, list[dict[str, Any]] | None]:
        if not self._calling:
            return "", None
        content, calls = split_tool_calls(self._ids, self._tokenizer)
        rest = content[len(self._sent) :] if content.startswith(self._sent) else ""
        return rest, calls


def required_tools_schema(tools: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """tool_choice "required", as vLLM enforces it: a JSON list of at least one {"name", "parameters"}
    object, each naming one of the tools with arguments valid for its schema."""
    variants = [
        {
            "properties": {
                "name": {"type": "string", "enum": [t["function"]["name"]]},
                "parameters": t["function"].get("parameters") or {"type": "object"},
            },
            "required": ["name", "parameters"],
        }
        for t in tools
    ]
    return {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": variants}}


class ForcedToolCalls:
    """The output of a request whose tool_choice forced a call (structured output made it valid JSON):
    a named function's arguments, or "required"'s list of {"name", "parameters"}. Same interface as
    ToolCallStream: nothing is sent as content."""

    def __init__(self, name: str | None) -> None:
        self.name = name  # None: "required"
        self._text = ""

    def feed(self, text: str, token_ids: Sequence[int]) -> str:
        self._text += text
        return ""

    def finish(self) -> tuple[str, list[dict[str, Any]] | None]:
        if self.name is not None:
            call = {"name": self.name, "arguments": self._text}
            return "", [{"id": new_tool_call_id(), "type": "function", "function": call}]
        try:
            items = json.loads(self._text)
        except json.JSONDecodeError:  # cut by max_tokens: what was generated comes back as content
            return self._text, None
        calls = parse_tool_calls(
            json.dumps([{"name": i["name"], "arguments": i["parameters"]} for i in items])
        )
        return "", calls
