"""Pydantic models of the OpenAI chat-completions protocol (the subset Pixtral serves).

Every parameter is honoured or refused, never accepted and ignored: a request model keeps the fields it does
not declare (extra="allow") and `first_unsupported` names the first one set to anything but null, or a
declared field listed in its NEUTRAL_ONLY set to a value this server would not honour (tools, an image's
"low" detail, a participant name, ...); the route answers that with 400 `unsupported_parameter`.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from pixtral.engine.structured import StructuredOutput

MAX_SEED = 2**63 - 1
MAX_LOGPROBS = 20  # OpenAI's limit on top_logprobs (pixtral.engine.sampling.MAX_LOGPROBS)
MAX_LOGIT_BIAS = 100.0


def _utf8(value: str) -> str:
    # JSON may carry lone surrogates ("\ud800"); they cannot be encoded, so refuse them here.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError("text must be valid Unicode (it contains a lone surrogate escape)") from e
    return value


class FieldError(ValueError):
    """A request that is invalid across fields; `param` names the field to fix (the route answers 400)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


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


class FunctionCall(_Checked):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(_Checked):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Checked):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None  # the prompt format has no participant names
    tool_calls: list[ToolCall] | None = None  # assistant messages
    tool_call_id: str | None = None  # tool messages: the call they answer
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
        if self.tool_calls and self.role != "assistant":
            raise ValueError(
                f"tool_calls are allowed in assistant messages only, not in {self.role} messages"
            )
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool message needs tool_call_id (the id of the call it answers), others none")
        if self.role != "user" and isinstance(self.content, list):
            if any(isinstance(p, ImagePart) for p in self.content):
                raise ValueError(f"images are allowed in user messages only, not in {self.role} messages")
        return self


class StreamOptions(_Checked):
    include_usage: bool = False


class FunctionDefinition(_Checked):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema
    strict: bool | None = None  # honoured when tool_choice forces the call (structured output)


class ToolDefinition(_Checked):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Checked):
    name: str


class NamedToolChoice(_Checked):
    type: Literal["function"]
    function: NamedFunction


class _SamplingFields(_Checked):
    """The fields shared by chat and text completions: OpenAI's sampling fields, then vLLM's extras."""

    model: str | None = Field(default=None, description="The served model name (see /v1/models)")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=-1, le=1_000_000, description="0 or -1: disabled")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None  # token id (as a JSON key) -> bias in [-100, 100]
    user: str | None = None  # an end-user id for the provider's records: it asks nothing of the generation
    # vLLM's sampling extras (`extra_body`).
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    min_tokens: int | None = Field(default=None, ge=0)
    ignore_eos: bool | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    # vLLM's structured-output extras (one at a time).
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = Field(default=None, min_length=1)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: Any) -> Any:
        for s in [v] if isinstance(v, str) else v or []:
            _utf8(s)
        return v

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (v or {}).items():
            if not key.isdigit():
                raise ValueError(f"logit_bias keys must be token ids (digits), got {key!r}")
            if not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
                raise ValueError(f"logit_bias for token {key} must be in [-100, 100], got {bias}")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return [s for s in stops if s]

    def sampling_extras(self) -> dict[str, Any]:
        """The SamplingParams fields beyond temperature/top_p/top_k/seed/stop that this request sets."""
        return sampling_extras(self)

    def check(self) -> None:
        """The checks across fields (FieldError names the field to fix)."""
        self.structured()

    def structured(self) -> tuple[str, StructuredOutput] | None:
        """(the field that asks for it, the structured output) or None; FieldError when several do."""
        asked = []
        if self.guided_json is not None:
            schema = self.guided_json
            asked.append(("guided_json", StructuredOutput.json_schema(schema)))
        if self.guided_regex is not None:
            asked.append(("guided_regex", StructuredOutput("regex", self.guided_regex)))
        if self.guided_choice is not None:
            asked.append(("guided_choice", StructuredOutput.choice(self.guided_choice)))
        format_ = getattr(self, "response_format", None) or {}
        kind = format_.get("type", "text")
        if kind == "json_object":
            asked.append(("response_format", StructuredOutput("json_object")))
        elif kind == "json_schema":
            spec = format_.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                raise FieldError(
                    "response_format",
                    "response_format json_schema needs {'json_schema': {'name': ..., 'schema': {...}}}",
                )
            asked.append(
                ("response_format", StructuredOutput.json_schema(spec.get("schema") or {"type": "object"}))
            )
        elif kind != "text":
            raise FieldError(
                "response_format",
                f"response_format type must be text, json_object or json_schema, not {kind!r}",
            )
        if len(asked) > 1:
            raise FieldError(
                asked[1][0], f"{asked[0][0]} and {asked[1][0]} both ask for structured output: send one"
            )
        return asked[0] if asked else None


class ChatCompletionRequest(_SamplingFields):
    """/v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    response_format: dict[str, Any] | None = None
    tools: list[ToolDefinition] | None = None
    # "required" and a named function are enforced with structured output (the arguments follow the schema).
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None  # the model may always call several tools at once
    NEUTRAL_ONLY: ClassVar[dict[str, tuple]] = {"parallel_tool_calls": (None, True)}

    def check(self) -> None:
        """The checks across fields (FieldError names the field to fix)."""
        super().check()
        if self.top_logprobs and not self.logprobs:
            raise FieldError("top_logprobs", "top_logprobs needs logprobs set to true")
        if self.forced_tool() is not None and self.structured() is not None:
            raise FieldError(
                "tool_choice",
                "tool_choice forces a call, which is structured output already: drop response_format",
            )

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def forced_tool(self) -> tuple[str | None, dict] | None:
        """tool_choice "required" (None, {}) or a named function (its name, its definition); None otherwise.
        ValueError when there is nothing to call."""
        choice = self.tool_choice
        if choice is None or choice in ("none", "auto"):
            return None
        tools = {t.function.name: t for t in self.tools or []}
        if not tools:
            raise FieldError(
                "tool_choice",
                f"tool_choice {choice if isinstance(choice, str) else 'a function'} needs tools",
            )
        if choice == "required":
            return None, {}
        if choice.function.name not in tools:
            raise FieldError(
                "tool_choice", f"tool_choice names {choice.function.name!r}, which is not among the tools"
            )
        return choice.function.name, tools[choice.function.name].model_dump(exclude_none=True)

    def unsupported(self) -> str | None:
        """The first parameter set to a value this server cannot honour (a dotted path), or None."""
        forced = self.tool_choice not in (None, "none", "auto")
        for i, tool in enumerate(self.tools or []):
            if tool.function.strict and not forced:  # a schema is only enforced on a forced call
                return f"tools.{i}.function.strict"
        return first_unsupported(self)


class CompletionRequest(_SamplingFields):
    """/v1/completions: a raw text prompt (or its token ids), no chat template."""

    prompt: str | list[Annotated[int, Field(ge=0)]] | list[str] | list[list[Annotated[int, Field(ge=0)]]]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for this endpoint
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None
    add_special_tokens: bool = True  # vLLM: BOS before the prompt text
    NEUTRAL_ONLY: ClassVar[dict[str, tuple]] = {
        "echo": (None, False),
        "suffix": (None, ""),
        "best_of": (None, 1),
    }

    @model_validator(mode="after")
    def _one_prompt(self) -> CompletionRequest:
        prompt = self.single_prompt()
        if isinstance(prompt, str):
            _utf8(prompt)
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def single_prompt(self) -> str | list[int]:
        """The one prompt of the request (a batch of prompts is refused: send one request per prompt)."""
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            if len(p) != 1:
                raise ValueError("send one prompt per request (a list of prompts is not supported)")
            p = p[0]
        if isinstance(p, list) and not p:
            raise ValueError("the prompt is empty")
        return p

    def unsupported(self) -> str | None:
        return first_unsupported(self)


class TokenizeRequest(_Checked):
    """vLLM's /tokenize: either `prompt` (raw text) or `messages` (the chat template, images included)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    tools: list[ToolDefinition] | None = None  # messages: the functions the prompt offers
    add_special_tokens: bool | None = None  # prompt: BOS (default true); messages: the template adds it
    add_generation_prompt: bool | None = None  # messages: the prompt always ends with [/INST]
    return_token_strs: bool | None = False
    NEUTRAL_ONLY: ClassVar[dict[str, tuple]] = {"add_generation_prompt": (None, True)}

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send either 'prompt' (text) or 'messages' (a chat), not both or neither")
        if self.messages is not None and self.add_special_tokens:
            raise ValueError("add_special_tokens applies to a 'prompt': the chat template adds BOS itself")
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(_Checked):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class VersionResponse(BaseModel):
    version: str


# --- responses ---------------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None  # Magistral's [THINK] text (vLLM's field); omitted when None
    tool_calls: list[dict[str, Any]] | None = None  # [{id, type: "function", function: {name, arguments}}]

    @model_serializer(mode="wrap")
    def _omit_absent_fields(self, handler: Any) -> dict[str, Any]:
        """No reasoning, no tool calls: the message keeps OpenAI's plain shape."""
        data = handler(self)
        for name in ("reasoning_content", "tool_calls"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"] | None
    logprobs: ChoiceLogprobs | None = None


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
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None = None  # {tokens, token_logprobs, top_logprobs, text_offset}
    finish_reason: Literal["stop", "length", "tool_calls"] | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
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


def sampling_extras(body: Any) -> dict[str, Any]:
    """The SamplingParams keyword arguments for the sampling controls a chat or text completion request sets
    (unset ones are left out, so the engine's neutral defaults apply)."""
    out: dict[str, Any] = {}
    for name in ("presence_penalty", "frequency_penalty", "repetition_penalty", "min_p", "min_tokens"):
        if getattr(body, name) is not None:
            out[name] = getattr(body, name)
    if body.logit_bias:
        out["logit_bias"] = {int(k): float(v) for k, v in body.logit_bias.items()}
    if body.ignore_eos:
        out["ignore_eos"] = True
    if body.stop_token_ids:
        out["stop_token_ids"] = list(body.stop_token_ids)
    structured = body.structured()
    if structured is not None:
        out["structured"] = structured[1]
    return out


def new_completion_id(prefix: str = "chatcmpl-") -> str:
    return prefix + uuid.uuid4().hex


def now() -> int:
    return int(time.time())
