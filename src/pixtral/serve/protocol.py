"""Pydantic models of the OpenAI chat-completions protocol (the subset Pixtral serves).

Every parameter is honoured or refused, never accepted and ignored: a request model keeps the fields it does
not declare (extra="allow") and `first_unsupported` names the first one set to anything but null, or a
declared field listed in its NEUTRAL_ONLY set to a value this server would not honour (penalties, vLLM's
sampling extras, ...); the route answers that with 400 `unsupported_parameter`.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

MAX_SEED = 2**63 - 1


def _utf8(value: str) -> str:
    # JSON may carry lone surrogates ("\ud800"); they cannot be encoded, so refuse them here.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError("text must be valid Unicode (it contains a lone surrogate escape)") from e
    return value


class _Checked(BaseModel):
    """A request part: undeclared fields are kept for `first_unsupported`; NEUTRAL_ONLY maps a declared field
    this server cannot honour to the values that ask for nothing (accepted for compatibility)."""

    model_config = ConfigDict(extra="allow")
    NEUTRAL_ONLY: ClassVar[dict[str, tuple]] = {}


def first_unsupported(model: BaseModel, path: str = "") -> str | None:
    """The dotted path ("repetition_penalty", "messages.0.tool_calls") of the first field set to a value this
    server would not honour: an undeclared field that is not null, or a NEUTRAL_ONLY field off its neutral
    values. None when every field is honoured."""
    for name, value in (model.model_extra or {}).items():
        if value is not None:
            return path + name
    for name, neutral in getattr(model, "NEUTRAL_ONLY", {}).items():
        if getattr(model, name) not in neutral:
            return path + name
    for name in type(model).model_fields:
        value = getattr(model, name)
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for i, child in items:
            if isinstance(child, BaseModel):
                found = first_unsupported(child, f"{path}{name}." if i is None else f"{path}{name}.{i}.")
                if found is not None:
                    return found
    return None


class ImageURL(_Checked):
    url: str = Field(min_length=1, description="A data: URL, an http(s) URL (if enabled) or a local file")
    # Images are always used at full resolution (up to the model's limit): "low" would not be honoured.
    detail: Literal["auto", "low", "high"] | None = None
    NEUTRAL_ONLY: ClassVar[dict[str, tuple]] = {"detail": (None, "auto", "high")}

    @field_validator("url")
    @classmethod
    def _check(cls, v: str) -> str:
        return _utf8(v)


class TextPart(_Checked):
    type: Literal["text"]
    text: str

    @field_validator("text")
    @classmethod
    def _check(cls, v: str) -> str:
        return _utf8(v)


class ImagePart(_Checked):
    type: Literal["image_url"]
    image_url: ImageURL

    @field_validator("image_url", mode="before")
    @classmethod
    def _str_url(cls, v: Any) -> Any:
        return {"url": v} if isinstance(v, str) else v


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Checked):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None  # the prompt format has no participant names
    NEUTRAL_ONLY: ClassVar[dict[str, tuple]] = {"name": (None,)}

    @field_validator("content")
    @classmethod
    def _content(cls, v: Any) -> Any:
        if isinstance(v, str):
            _utf8(v)
        return v

    @model_validator(mode="after")
    def _roles(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        if self.role != "user" and isinstance(self.content, list):
            if any(isinstance(p, ImagePart) for p in self.content):
                raise ValueError(f"images are allowed in user messages only, not in {self.role} messages")
        return self


class StreamOptions(_Checked):
    include_usage: bool = False


class ChatCompletionRequest(_Checked):
    model: str | None = Field(default=None, description="The served model name (see /v1/models)")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=-1, le=1_000_000, description="0 or -1: disabled")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Accepted for compatibility; only their neutral values are supported (NEUTRAL_ONLY).
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    user: str | None = None  # an end-user id for the provider's records: it asks nothing of the generation
    # vLLM's sampling extras (`extra_body`), not implemented yet: likewise neutral values only.
    repetition_penalty: float | None = None
    min_p: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None
    NEUTRAL_ONLY: ClassVar[dict[str, tuple]] = {
        "frequency_penalty": (None, 0.0),
        "presence_penalty": (None, 0.0),
        "logprobs": (None, False),
        "top_logprobs": (None, 0),
        "logit_bias": (None, {}),
        "tools": (None, []),
        "tool_choice": (None, "none", "auto"),
        "repetition_penalty": (None, 1.0),
        "min_p": (None, 0.0),
        "min_tokens": (None, 0),
        "ignore_eos": (None, False),
        "stop_token_ids": (None, []),
    }

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: Any) -> Any:
        for s in [v] if isinstance(v, str) else v or []:
            _utf8(s)
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return [s for s in stops if s]

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def unsupported(self) -> str | None:
        """The first parameter set to a value this server cannot honour (a dotted path), or None."""
        if self.response_format and self.response_format.get("type", "text") != "text":
            return "response_format"
        return first_unsupported(self)


# --- responses ---------------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    reasoning_content: str | None = None  # Magistral's [THINK] text (vLLM's field); omitted when None

    @model_serializer(mode="wrap")
    def _omit_absent_reasoning(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("reasoning_content") is None:
            data.pop("reasoning_content", None)
        return data


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None  # sent in chunks of its own, only by reasoning models


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "pixtral"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def new_completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def now() -> int:
    return int(time.time())
