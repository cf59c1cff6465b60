"""OpenAI-shaped chat messages -> token ids + pixel arrays.

The messages are translated into a mistral-common `ChatCompletionRequest` (TextChunk / ImageChunk holding the
image this module loaded and validated) and encoded by mistral-common itself, so the chat template, the image
token grid, the resize and the normalisation are exactly the reference's (system prompt on the last user
turn, "\\n\\n" joins, image-first reordering of [text..., image] messages, [IMG]/[IMG_BREAK]/[IMG_END] blocks).

Messages:  {"role": "system" | "user" | "assistant", "content": str | list[part]}
           {"role": "assistant", "content": str | None, "tool_calls": [{"id", "type": "function",
                                                          "function": {"name", "arguments": JSON str}}]}
           {"role": "tool", "content": str, "tool_call_id": str}
Parts:     {"type": "text", "text": str}
           {"type": "image_url", "image_url": {"url": str}}   data: URL, local path, file:// or http(s):// URL
           {"type": "image", "image": PIL.Image | bytes | path}
Tools:     [{"type": "function", "function": {"name", "description", "parameters": JSON schema}}], encoded
           by mistral-common ([AVAILABLE_TOOLS] before the last user turn, [TOOL_CALLS] in assistant turns,
           [TOOL_RESULTS] for tool messages, on this tokenizer's version).
Images are allowed in user messages only. The conversation must end with a user or tool message (system
messages may follow it): the prompt then ends where the assistant's answer starts. A conversation that ends
with an assistant message is refused, since continuing a partial answer is not supported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mistral_common.exceptions import MistralCommonException
from mistral_common.protocol.instruct.chunk import ImageChunk, TextChunk
from mistral_common.protocol.instruct.messages import (
    AssistantMessage,
    SystemMessage,
    ToolMessage,
    UserMessage,
)
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.protocol.instruct.tool_calls import Function, FunctionCall, Tool, ToolCall
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from pydantic import ValidationError

from pixtral.errors import InputError
from pixtral.prompt.image_budget import fit_image_budget
from pixtral.prompt.images import LOCAL_MEDIA, MediaPolicy, MediaRefused, load_image

ROLES = ("system", "user", "assistant", "tool")
_MESSAGE_TYPES = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
MistralMessage = SystemMessage | UserMessage | AssistantMessage | ToolMessage
TOOL_CALL_ID_LENGTH = 9  # mistral-common: a tool call id is 9 characters a-z, A-Z, 0-9


@dataclass
class EncodedPrompt:
    """A prompt ready for the model."""

    token_ids: list[int]  # starts with BOS, ends with [/INST]; each image is an [IMG]...[IMG_END] block
    images: list[np.ndarray] = field(default_factory=list)  # (3, H, W) float32, in prompt order


def encode_chat(
    messages: Sequence[Mapping[str, Any]],
    tokenizer: MistralTokenizer,
    *,
    media: MediaPolicy = LOCAL_MEDIA,
    max_image_tokens: int | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> EncodedPrompt:
    """Encode a conversation exactly as mistral-common does. Raises InputError naming the message (and
    part) at fault. With `max_image_tokens`, images whose [IMG] tokens would exceed it in total are scaled
    down first (image_budget.py). `tools`: OpenAI-shaped function definitions. `media`: which image sources
    may be read, and how large (prompt/images.py)."""
    mistral_messages = to_mistral_messages(messages, tokenizer, media=media)
    if max_image_tokens is not None:
        chunks = [c for m in mistral_messages if isinstance(m.content, list) for c in m.content]
        images = [c for c in chunks if isinstance(c, ImageChunk)]
        if images:
            fit_image_budget(images, tokenizer.instruct_tokenizer.image_encoder, max_image_tokens)
    try:
        request = ChatCompletionRequest(messages=mistral_messages, tools=to_mistral_tools(tools))
    except ValidationError as e:
        raise InputError(f"the tools are not valid: {e.errors()[0].get('msg', e)}") from e
    try:
        tokenized = tokenizer.encode_chat_completion(request)
    except (MistralCommonException, ValueError, AssertionError) as e:
        raise InputError(f"the conversation cannot be encoded: {e}") from e
    images = [np.ascontiguousarray(image, dtype=np.float32) for image in tokenized.images]
    return EncodedPrompt(token_ids=list(tokenized.tokens), images=images)


def to_mistral_messages(
    messages: Sequence[Mapping[str, Any]],
    tokenizer: MistralTokenizer,
    *,
    media: MediaPolicy = LOCAL_MEDIA,
    allow_final_assistant: bool = False,
) -> list[MistralMessage]:
    """Validate OpenAI-shaped messages and build mistral-common messages (images loaded and checked).

    A prompt must end with a user turn; training conversations (`allow_final_assistant=True`) end with the
    assistant's reply."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise InputError("messages must be a list of {'role': ..., 'content': ...} objects")
    if not messages:
        raise InputError("the conversation is empty: send at least one user message")

    roles = [_role(index, message) for index, message in enumerate(messages)]  # cheap checks first
    last = max((index for index, role in enumerate(roles) if role != "system"), default=-1)
    if last >= 0 and roles[last] == "assistant" and not allow_final_assistant:
        raise InputError(
            f"message {last} is from the assistant and nothing from the user follows it: end the conversation "
            "with a user message (continuing an assistant reply is not supported)"
        )
    return [_convert_message(index, message, tokenizer, media) for index, message in enumerate(messages)]


def _role(index: int, message: Any) -> str:
    if not isinstance(message, Mapping):
        raise InputError(
            f"message {index} must be an object with 'role' and 'content', not {type(message).__name__}"
        )
    role = message.get("role")
    if role not in ROLES:
        raise InputError(f"message {index} has role {role!r}; use one of {', '.join(ROLES)}")
    return role


def _convert_message(
    index: int,
    message: Any,
    tokenizer: MistralTokenizer,
    media: MediaPolicy,
) -> MistralMessage:
    where = f"message {index}"
    role = _role(index, message)
    tool_calls = message.get("tool_calls") if role == "assistant" else None
    if "content" not in message and not tool_calls:
        raise InputError(f"{where} ({role}) has no 'content'")
    content = message.get("content")
    if role == "tool":
        return _tool_message(where, message)
    if tool_calls:
        return _assistant_tool_calls(where, content, tool_calls)

    if isinstance(content, str):
        chunks: str | list[TextChunk | ImageChunk] = content
    elif isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        chunks = [
            _convert_part(f"{where} ({role}) part {part_index}", role, part, tokenizer, media)
            for part_index, part in enumerate(content)
        ]
    else:
        raise InputError(
            f"{where} ({role}) content must be a string or a list of parts, not {type(content).__name__}"
        )
    try:
        return _MESSAGE_TYPES[role](content=chunks)
    except ValidationError as e:
        raise InputError(f"{where} ({role}) is not valid: {e.errors()[0].get('msg', e)}") from e


def to_mistral_tools(tools: Sequence[Mapping[str, Any]] | None) -> list[Tool] | None:
    """OpenAI tool definitions -> mistral-common Tools (None when there are none)."""
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(function, Mapping) or tool.get("type", "function") != "function":
            raise InputError(f"tool {i} must be {{'type': 'function', 'function': {{'name': ..., ...}}}}")
        try:
            out.append(
                Tool(
                    function=Function(
                        name=function.get("name"),
                        description=function.get("description") or "",
                        parameters=function.get("parameters") or {},
                    )
                )
            )
        except (ValidationError, TypeError) as e:
            raise InputError(f"tool {i} is not valid: {e}") from e
    return out


def mistral_tool_call_id(call_id: Any, where: str) -> str:
    """A tool call id as mistral-common needs it: 9 characters a-z, A-Z, 0-9. A longer id (OpenAI's
    "call_...") keeps its last 9 characters, as vLLM does for Mistral models."""
    if not isinstance(call_id, str) or not call_id:
        raise InputError(f"{where} needs a tool call id (a string)")
    return call_id[-TOOL_CALL_ID_LENGTH:]


def _text_content(where: str, content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and all(
        isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return "".join(p["text"] for p in content)
    raise InputError(f"{where} content must be a string or a list of text parts")


def _tool_message(where: str, message: Mapping[str, Any]) -> ToolMessage:
    call_id = mistral_tool_call_id(message.get("tool_call_id"), f"{where} (tool)")
    try:
        return ToolMessage(
            content=_text_content(f"{where} (tool)", message.get("content")), tool_call_id=call_id
        )
    except ValidationError as e:
        raise InputError(f"{where} (tool) is not valid: {e.errors()[0].get('msg', e)}") from e


def _assistant_tool_calls(where: str, content: Any, tool_calls: Any) -> AssistantMessage:
    if not isinstance(tool_calls, Sequence) or isinstance(tool_calls, (str, bytes)):
        raise InputError(f"{where} (assistant) tool_calls must be a list")
    calls = []
    for j, call in enumerate(tool_calls):
        at = f"{where} (assistant) tool call {j}"
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise InputError(f"{at} needs {{'id', 'type': 'function', 'function': {{'name', 'arguments'}}}}")
        arguments = function.get("arguments", "{}")
        try:
            calls.append(
                ToolCall(
                    id=mistral_tool_call_id(call.get("id"), at),
                    function=FunctionCall(name=function["name"], arguments=arguments),
                )
            )
        except (ValidationError, TypeError) as e:
            raise InputError(f"{at} is not valid: {e}") from e
    text = _text_content(f"{where} (assistant)", content)
    return AssistantMessage(content=text or None, tool_calls=calls)


def _convert_part(
    where: str,
    role: str,
    part: Any,
    tokenizer: MistralTokenizer,
    media: MediaPolicy,
) -> TextChunk | ImageChunk:
    if not isinstance(part, Mapping):
        raise InputError(f"{where} must be an object with a 'type', not {type(part).__name__}")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise InputError(f"{where} is a text part whose 'text' is missing or not a string")
        return TextChunk(text=text)
    if kind not in ("image_url", "image"):
        raise InputError(f"{where} has type {kind!r}; use 'text', 'image_url' or 'image'")

    if role != "user":
        raise InputError(f"{where} is an image: images are only allowed in user messages")
    if tokenizer.instruct_tokenizer.image_encoder is None:
        raise InputError(f"{where} is an image but this model's tokenizer has no image support")
    if kind == "image_url":
        image_url = part.get("image_url")
        source = image_url.get("url") if isinstance(image_url, Mapping) else image_url
        if not isinstance(source, str):
            raise InputError(f"{where} needs 'image_url': {{'url': <data: URL, path or http(s) URL>}}")
    else:
        source = part.get("image")
        if source is None:
            raise InputError(f"{where} needs 'image': a PIL image, bytes or a path")
    try:
        image = load_image(source, media)
    except MediaRefused as e:  # keeps its reason (the server's error code)
        raise MediaRefused(f"{where}: {e}", e.reason) from e
    except InputError as e:
        raise InputError(f"{where}: {e}") from e
    return ImageChunk(image=image)


def encode_text(text: str, tokenizer: MistralTokenizer, *, bos: bool = True) -> EncodedPrompt:
    """A raw text prompt (no chat template), as vLLM's /v1/completions and /tokenize encode it: the tekken
    tokens of the text, after BOS when `bos` (vLLM's add_special_tokens, true by default)."""
    tekken = tokenizer.instruct_tokenizer.tokenizer
    return EncodedPrompt(token_ids=list(tekken.encode(text, bos=bos, eos=False)))


def decode_ids(token_ids: Sequence[int], tokenizer: MistralTokenizer) -> str:
    """Token ids -> text, control tokens left out (mistral-common's default). Raises InputError for an id
    outside the vocabulary."""
    tekken = tokenizer.instruct_tokenizer.tokenizer
    bad = [t for t in token_ids if not 0 <= t < tekken.n_words]
    if bad:
        raise InputError(f"token id {bad[0]} is outside the vocabulary (0..{tekken.n_words - 1})")
    return tekken.decode(list(token_ids))
