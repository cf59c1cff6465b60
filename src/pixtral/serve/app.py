"""The FastAPI application: routes only; every piece of work is in the modules beside it.

`create_app(engine, settings)` takes an `EngineClient` (pixtral/engine/protocol.py: the real engine or a
stand-in with the same members); `engine=None` starts the server unready (`/health` 503)
until `app.state.server.set_engine(engine)` is called, so a CLI can listen while the model loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import importlib.metadata
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from pixtral.engine.protocol import EngineClient
from pixtral.engine.structured import StructuredOutput
from pixtral.errors import InputError
from pixtral.prompt.chat import EncodedPrompt, decode_ids, encode_chat, encode_text
from pixtral.prompt.tool_calls import ForcedToolCalls, ToolCallStream, required_tools_schema, split_tool_calls
from pixtral.serve import protocol as P
from pixtral.serve.access_log import AccessLogMiddleware
from pixtral.serve.errors import APIError, bad_request, install_error_handlers
from pixtral.serve.limits import BodyLimitMiddleware
from pixtral.serve.logprobs import LogprobsFormatter
from pixtral.serve.media import check_request_shape, media_policy, to_engine_messages
from pixtral.serve.media_guard import RemoteMediaFetcher
from pixtral.serve.metrics import CONTENT_TYPE, ServerMetrics
from pixtral.serve.settings import ServeSettings
from pixtral.serve.worker import EngineWorker, Event, GenerationSpec, Job

log = logging.getLogger("pixtral.serve")
STATIC_DIR = Path(__file__).parent / "static"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class ServerState:
    """What the routes share: settings, metrics, the engine worker and the remote-media fetcher."""

    def __init__(
        self, engine: EngineClient | None, settings: ServeSettings, fetcher: RemoteMediaFetcher | None = None
    ):
        self.settings = settings
        self.metrics = ServerMetrics()
        self.engine: EngineClient | None = None
        self.worker: EngineWorker | None = None
        self.draining = False
        self.started = int(time.time())
        self.fetcher = fetcher
        self._formatter: LogprobsFormatter | None = None
        if self.fetcher is None and settings.allow_remote_media:
            self.fetcher = RemoteMediaFetcher(
                max_bytes=settings.max_image_bytes,
                timeout_s=settings.remote_timeout_s,
                max_redirects=settings.remote_max_redirects,
                allowed_domains=settings.allowed_media_domains,
            )
        self.media = media_policy(settings, self.fetcher)  # which image sources requests may name
        self._key_digest = hashlib.sha256(settings.api_key.encode()).digest() if settings.api_key else None
        if engine is not None:
            self.set_engine(engine)

    def set_engine(self, engine: EngineClient) -> None:
        self.engine = engine
        self.worker = EngineWorker(engine, self.settings, self.metrics)
        self.metrics.engine_stats = engine.stats

    def formatter(self) -> LogprobsFormatter:
        """Token ids -> OpenAI logprobs entries, with the engine's tokenizer."""
        if self._formatter is None:
            self._formatter = LogprobsFormatter(self.engine.tokenizer)
        return self._formatter

    @property
    def model_name(self) -> str:
        if self.settings.served_model_name:
            return self.settings.served_model_name
        return "pixtral" if self.engine is None else str(self.engine.model_name)

    def ready_worker(self) -> EngineWorker:
        if self.draining:
            raise APIError(503, "The server is shutting down; retry on another instance.", code="draining")
        if self.worker is None:
            raise APIError(
                503,
                "The model is still loading; retry in a few seconds.",
                code="model_loading",
                headers={"Retry-After": "5"},
            )
        return self.worker

    def check_key(self, authorization: str | None) -> None:
        if self._key_digest is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        given = hashlib.sha256(token.strip().encode("utf-8", "surrogatepass")).digest()
        # Compare digests of equal length in constant time; evaluate both conditions always.
        ok = hmac.compare_digest(given, self._key_digest) & (scheme.lower() == "bearer")
        if not ok:
            raise APIError(
                401,
                "Missing or invalid API key: send the header 'Authorization: Bearer <key>' with the key the "
                "server was started with (--api-key or PIXTRAL_API_KEY).",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )


def _state(request: Request) -> ServerState:
    return request.app.state.server


def require_key(request: Request) -> None:
    _state(request).check_key(request.headers.get("authorization"))


def create_app(
    engine: EngineClient | None,
    settings: ServeSettings | None = None,
    *,
    fetcher: RemoteMediaFetcher | None = None,
) -> FastAPI:
    settings = settings or ServeSettings()
    state = ServerState(engine, settings, fetcher)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        # Shutdown (after uvicorn stopped accepting and let in-flight responses finish): drain, then stop.
        state.draining = True
        state.metrics.draining.set(1)
        if state.worker is not None:
            idle = await run_in_threadpool(state.worker.wait_idle, settings.drain_timeout_s)
            if not idle:
                log.warning("drain timeout: %d requests still admitted", state.worker.admitted)
            state.worker.shutdown()
        if state.fetcher is not None:
            state.fetcher.close()

    app = FastAPI(
        title="pixtral",
        summary="OpenAI-compatible chat completions with images, served by Pixtral.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.server = state
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(AccessLogMiddleware, metrics=state.metrics, enabled=settings.access_log)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    @app.get("/health", summary="200 when the model is loaded and the server is not draining")
    async def health() -> JSONResponse:
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if state.worker is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok", "model": state.model_name})

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", response_model=P.ModelList, dependencies=[Depends(require_key)])
    async def list_models() -> P.ModelList:
        if state.engine is None:  # 503 like a chat request: clients that poll here wait for the weights
            state.ready_worker()
        return P.ModelList(data=[_model_card(state)])

    @app.get("/v1/models/{model_id:path}", response_model=P.ModelCard, dependencies=[Depends(require_key)])
    async def get_model(model_id: str) -> P.ModelCard:
        if state.engine is None or model_id != state.model_name:
            raise APIError(
                404,
                f"The model {model_id!r} does not exist; this server serves {state.model_name!r}.",
                code="model_not_found",
            )
        return _model_card(state)

    @app.post(
        "/v1/chat/completions",
        response_model=P.ChatCompletion,
        dependencies=[Depends(require_key)],
        responses={200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE when stream"}},
    )
    async def chat_completions(body: P.ChatCompletionRequest, request: Request) -> Response:
        return await _chat(state, body, request)

    @app.post(
        "/v1/completions",
        response_model=P.Completion,
        dependencies=[Depends(require_key)],
        responses={200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE when stream"}},
    )
    async def completions(body: P.CompletionRequest, request: Request) -> Response:
        return await _completions(state, body, request)

    @app.post("/tokenize", response_model=P.TokenizeResponse, dependencies=[Depends(require_key)])
    async def tokenize(body: P.TokenizeRequest) -> P.TokenizeResponse:
        return await _tokenize(state, body)

    @app.post("/detokenize", response_model=P.DetokenizeResponse, dependencies=[Depends(require_key)])
    async def detokenize(body: P.DetokenizeRequest) -> P.DetokenizeResponse:
        _ready_engine(state, body)
        return P.DetokenizeResponse(prompt=decode_ids_checked(body.tokens, state.engine.tokenizer, "tokens"))

    @app.get("/version", response_model=P.VersionResponse)
    async def version() -> P.VersionResponse:
        return P.VersionResponse(version=_package_version())

    return app


def _package_version() -> str:
    try:
        return importlib.metadata.version("pixtral")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def _ready_engine(state: ServerState, body: Any) -> None:
    """/tokenize and /detokenize: the engine is loaded, the model is ours and every field is honoured."""
    if state.engine is None:
        state.ready_worker()  # 503 while loading
    _check_model(state, body.model)
    unsupported = P.first_unsupported(body)
    if unsupported:
        raise bad_request(
            f"'{unsupported}' is not supported by this server (it would not be honoured); leave it unset.",
            param=unsupported,
            code="unsupported_parameter",
        )


async def _tokenize(state: ServerState, body: P.TokenizeRequest) -> P.TokenizeResponse:
    """vLLM's /tokenize: a text prompt (BOS unless add_special_tokens is false) or a chat, encoded exactly as
    a chat completion would be (images included, the prompt ending with [/INST])."""
    _ready_engine(state, body)
    engine = state.engine
    if body.prompt is not None:
        if len(body.prompt) > state.settings.max_text_chars:
            raise bad_request(
                f"The prompt has {len(body.prompt):,} characters; the limit is {state.settings.max_text_chars:,}.",
                param="prompt",
            )
        ids = encode_text(body.prompt, engine.tokenizer, bos=body.add_special_tokens is not False).token_ids
    else:
        check_request_shape(body, state.settings)
        messages = await run_in_threadpool(to_engine_messages, body, state.media)
        encoded = await run_in_threadpool(
            encode_chat,
            messages,
            engine.tokenizer,
            media=state.media,
            max_image_tokens=getattr(engine, "max_image_tokens", None),
            tools=[t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None,
        )
        ids = encoded.token_ids
    strs = [state.formatter().piece(t)[0] for t in ids] if body.return_token_strs else None
    return P.TokenizeResponse(
        count=len(ids), max_model_len=int(engine.max_context), tokens=ids, token_strs=strs
    )


def _model_card(state: ServerState) -> P.ModelCard:
    return P.ModelCard(
        id=state.model_name,
        created=state.started,
        max_model_len=None if state.engine is None else int(state.engine.max_context),
    )


def _validate(state: ServerState, body: P.ChatCompletionRequest) -> int:
    _validate_sampling(state, body)
    return check_request_shape(body, state.settings)


def _check_model(state: ServerState, model: str | None) -> None:
    if model and model != state.model_name:
        raise APIError(
            404,
            f"The model {model!r} does not exist; this server serves "
            f"{state.model_name!r} (see GET /v1/models).",
            param="model",
            code="model_not_found",
        )


def _validate_sampling(state: ServerState, body: Any) -> None:
    """The checks chat and text completions share: model, parameters not honoured, limits, sampling."""
    settings = state.settings
    _check_model(state, body.model)
    try:
        body.check()
    except P.FieldError as e:
        raise bad_request(str(e), param=e.param) from e
    unsupported = body.unsupported()
    if unsupported:
        raise bad_request(
            f"'{unsupported}' is not supported by this server (it would not be honoured); leave it unset.",
            param=unsupported,
            code="unsupported_parameter",
        )
    if body.n > settings.max_n:
        raise bad_request(f"n={body.n} is over this server's limit of {settings.max_n}.", param="n")
    requested = body.requested_max_tokens()
    if requested is not None and requested > settings.max_tokens_limit:
        raise bad_request(
            f"max_tokens={requested} is over this server's limit of {settings.max_tokens_limit}.",
            param="max_tokens",
        )
    if len(body.stop_list()) > settings.max_stop_sequences:
        raise bad_request(f"At most {settings.max_stop_sequences} stop sequences are allowed.", param="stop")
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed when stream is true.", param="stream_options")
    if body.min_tokens and requested is not None and body.min_tokens > requested:
        raise bad_request(
            f"min_tokens={body.min_tokens} is more than max_tokens={requested}.", param="min_tokens"
        )
    vocab = _vocab_size(state.engine)
    if vocab is None:
        return
    for name, ids in (
        ("logit_bias", [int(k) for k in body.logit_bias or {}]),
        ("stop_token_ids", body.stop_token_ids or []),
    ):
        bad = [t for t in ids if t >= vocab]
        if bad:
            raise bad_request(
                f"{name} has token id {bad[0]}, outside the vocabulary (0..{vocab - 1}).", param=name
            )


def _vocab_size(engine: Any) -> int | None:
    tokenizer = getattr(engine, "tokenizer", None)
    try:
        return int(tokenizer.instruct_tokenizer.tokenizer.n_words)
    except AttributeError:
        return None


def _spec(
    body: Any, messages: list[dict], logprobs: int | None, prompt: Any = None, tools: list[dict] | None = None
) -> GenerationSpec:
    extras = body.sampling_extras()
    if logprobs is not None:
        extras["logprobs"] = logprobs
    return GenerationSpec(
        messages=messages,
        n=body.n,
        max_tokens=body.requested_max_tokens(),
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=body.stop_list(),
        extras=extras,
        prompt=prompt,
        tools=tools,
    )


async def _start(
    state: ServerState, worker: EngineWorker, request: Request, make_spec: Any, arrival: float
) -> tuple[Job, asyncio.Task, Event]:
    """Admit (429 when full), build the spec inside the slot, submit, and wait for the "prompt" event."""
    ticket = worker.admit()  # 429 before any image is decoded
    try:
        job = worker.submit(ticket, await make_spec(), arrival)
    except BaseException:
        ticket.release()
        raise
    watcher = asyncio.create_task(_watch_disconnect(request, job))
    try:
        first = await job.next_event()  # "prompt" once the prompt fits, or an error
        if first.kind == "error":
            assert first.error is not None
            raise first.error
        if first.kind == "end":
            raise APIError(499, "The request was cancelled.")
    except BaseException:
        job.cancel.set()
        watcher.cancel()
        raise
    return job, watcher, first


async def _collect(
    job: Job, watcher: asyncio.Task, n: int
) -> tuple[list[str], list, int, list[list], list[list], list[str | None]]:
    """Every choice's text, finish reason, logprobs, token ids and reasoning ([THINK] text, None when there
    was none), and the number of tokens generated."""
    texts, reasons, tokens = [""] * n, [None] * n, 0
    thoughts: list[str | None] = [None] * n
    logprobs: list[list] = [[] for _ in range(n)]
    ids: list[list[int]] = [[] for _ in range(n)]
    try:
        while True:
            event = await job.next_event()
            if event.kind == "delta":
                texts[event.index] += event.text
                if event.reasoning:
                    thoughts[event.index] = (thoughts[event.index] or "") + event.reasoning
                tokens += event.tokens
                logprobs[event.index] += event.logprobs or []
                ids[event.index] += event.token_ids
            elif event.kind == "finish":
                reasons[event.index] = event.finish_reason
            elif event.kind == "error":
                assert event.error is not None
                raise event.error
            elif event.kind == "end":
                break
    finally:
        job.cancel.set()
        watcher.cancel()
    return texts, reasons, tokens, logprobs, ids, thoughts


def _log_fields(request: Request, body: Any) -> dict:
    log_fields: dict = request.scope.setdefault("state", {}).setdefault("log", {})
    log_fields.update(stream=body.stream, n=body.n)
    return log_fields


def _streaming(stream: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _usage(prompt_tokens: int, tokens: int) -> P.Usage:
    return P.Usage(prompt_tokens=prompt_tokens, completion_tokens=tokens, total_tokens=prompt_tokens + tokens)


async def _chat(state: ServerState, body: P.ChatCompletionRequest, request: Request) -> Response:
    arrival = time.monotonic()
    log_fields = _log_fields(request, body)
    worker = state.ready_worker()
    n_images = _validate(state, body)
    log_fields["images"] = n_images
    want_logprobs = bool(body.logprobs)
    tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
    # As vLLM: the tools are in the prompt whatever tool_choice says; "none" only turns the parsing off.
    # "required" and a named function are enforced with structured output: the answer is then the call.
    forced = body.forced_tool()
    parse_calls = bool(tools) and body.tool_choice != "none" and forced is None
    structured = None
    if forced is not None:
        name, tool = forced
        schema = (tool["function"].get("parameters") or {"type": "object"}) if name else None
        structured = StructuredOutput.json_schema(schema or required_tools_schema(tools or []))

    async def make_spec() -> GenerationSpec:
        messages = await run_in_threadpool(to_engine_messages, body, state.media)
        spec = _spec(body, messages, (body.top_logprobs or 0) if want_logprobs else None, tools=tools)
        if structured is not None:
            spec.extras["structured"] = structured
        return spec

    def new_calls() -> ToolCallStream | ForcedToolCalls:
        return ForcedToolCalls(forced[0]) if forced is not None else ToolCallStream(state.engine.tokenizer)

    job, watcher, first = await _start(state, worker, request, make_spec, arrival)
    state.metrics.images.inc(n_images)
    log_fields["prompt_tokens"] = first.prompt_tokens
    completion_id, created, model = P.new_completion_id(), P.now(), state.model_name
    if body.stream:

        def chunk(index: int, text: str | None, finish: str | None, logprobs: list | None) -> dict:
            if text is None:  # the opening chunk
                delta = {"role": "assistant", "content": ""}
            else:  # a token without text yet (part of a character) still brings its logprob
                delta = {"content": text} if text or logprobs else {}
            content = {"content": state.formatter().chat_content(logprobs)} if logprobs else None
            choice = {"index": index, "delta": delta, "logprobs": content, "finish_reason": finish}
            return {"object": "chat.completion.chunk", "choices": [choice]}

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        header = {"id": completion_id, "created": created, "model": model}
        calls = [new_calls() for _ in range(body.n)] if parse_calls or forced else None
        return _streaming(
            _sse(
                state,
                job,
                watcher,
                first.prompt_tokens,
                body.n,
                include_usage,
                header,
                log_fields,
                chunk,
                "chat.completion.chunk",
                calls,
            )
        )
    texts, reasons, tokens, logprobs, ids, thoughts = await _collect(job, watcher, body.n)
    _finish_metrics(state, arrival, log_fields, tokens, reasons)
    messages = []
    for i in range(body.n):
        content, calls = (texts[i], None)
        if forced is not None:
            forced_calls = ForcedToolCalls(forced[0])
            forced_calls.feed(texts[i], ids[i])
            content, calls = forced_calls.finish()
        elif parse_calls:
            content, calls = split_tool_calls(ids[i], state.engine.tokenizer)
            content = texts[i] if calls is None else content
        if calls and not (forced and forced[0]):  # a named call ends with "stop", as OpenAI's
            reasons[i] = "tool_calls"
        messages.append(
            P.AssistantMessage(
                content=content or (None if calls else ""), reasoning_content=thoughts[i], tool_calls=calls
            )
        )
    result = P.ChatCompletion(
        id=completion_id,
        created=created,
        model=model,
        usage=_usage(first.prompt_tokens, tokens),
        choices=[
            P.Choice(
                index=i,
                message=messages[i],
                finish_reason=reasons[i],
                logprobs={"content": state.formatter().chat_content(logprobs[i])} if want_logprobs else None,
            )
            for i in range(body.n)
        ],
    )
    return JSONResponse(result.model_dump())


async def _completions(state: ServerState, body: P.CompletionRequest, request: Request) -> Response:
    arrival = time.monotonic()
    log_fields = _log_fields(request, body)
    worker = state.ready_worker()
    _validate_sampling(state, body)
    raw = body.single_prompt()
    if isinstance(raw, str) and len(raw) > state.settings.max_text_chars:
        raise bad_request(
            f"The prompt has {len(raw):,} characters; the limit is {state.settings.max_text_chars:,}.",
            param="prompt",
        )
    tokenizer = state.engine.tokenizer
    if isinstance(raw, str):
        prompt = encode_text(raw, tokenizer, bos=body.add_special_tokens)
    else:
        decode_ids_checked(raw, tokenizer, "prompt")
        prompt = EncodedPrompt(token_ids=list(raw))
    if not prompt.token_ids:
        raise bad_request(
            "The prompt is empty: send some text (or keep add_special_tokens true).", param="prompt"
        )

    async def make_spec() -> GenerationSpec:
        return _spec(body, [], body.logprobs, prompt=prompt)

    job, watcher, first = await _start(state, worker, request, make_spec, arrival)
    log_fields["prompt_tokens"] = first.prompt_tokens
    completion_id, created, model = P.new_completion_id("cmpl-"), P.now(), state.model_name
    if body.stream:
        offsets = [0] * body.n

        def chunk(index: int, text: str | None, finish: str | None, logprobs: list | None) -> dict | None:
            if text is None:
                return None  # text completions have no opening chunk
            legacy = None
            if logprobs:
                legacy = state.formatter().completion(logprobs, offsets[index])
            offsets[index] += len(text)
            choice = {"index": index, "text": text, "logprobs": legacy, "finish_reason": finish}
            return {"object": "text_completion", "choices": [choice]}

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        header = {"id": completion_id, "created": created, "model": model}
        stream = _sse(
            state,
            job,
            watcher,
            first.prompt_tokens,
            body.n,
            include_usage,
            header,
            log_fields,
            chunk,
            "text_completion",
        )
        return _streaming(stream)
    texts, reasons, tokens, logprobs, _, thoughts = await _collect(job, watcher, body.n)
    texts = [(thought or "") + text for thought, text in zip(thoughts, texts, strict=True)]  # no field for it
    _finish_metrics(state, arrival, log_fields, tokens, reasons)
    result = P.Completion(
        id=completion_id,
        created=created,
        model=model,
        usage=_usage(first.prompt_tokens, tokens),
        choices=[
            P.CompletionChoice(
                index=i,
                text=texts[i],
                finish_reason=reasons[i],
                logprobs=state.formatter().completion(logprobs[i], 0) if body.logprobs is not None else None,
            )
            for i in range(body.n)
        ],
    )
    return JSONResponse(result.model_dump())


def decode_ids_checked(ids: list[int], tokenizer: Any, param: str) -> str:
    try:
        return decode_ids(ids, tokenizer)
    except InputError as e:
        raise bad_request(f"{param}: {e}.", param=param) from e


def _finish_metrics(state: ServerState, arrival: float, log_fields: dict, tokens: int, reasons: list) -> None:
    state.metrics.latency.observe(time.monotonic() - arrival)
    log_fields["completion_tokens"] = tokens
    log_fields["finish_reason"] = ",".join(str(r) for r in reasons)


async def _watch_disconnect(request: Request, job: Job) -> None:
    """Cancel the job as soon as the client goes away (the body is already read, so receive() waits)."""
    with contextlib.suppress(Exception):
        while not job.cancel.is_set():
            message = await request.receive()
            if message["type"] == "http.disconnect":
                job.cancel.set()
                return


def _tool_call_line(header: dict, usage_field: dict, index: int, call_delta: dict) -> bytes:
    choice = {"index": index, "delta": {"tool_calls": [call_delta]}, "logprobs": None, "finish_reason": None}
    return _sse_line({**header, "object": "chat.completion.chunk", "choices": [choice], **usage_field})


def _reasoning_line(header: dict, usage_field: dict, index: int, text: str) -> bytes:
    choice = {"index": index, "delta": {"reasoning_content": text}, "logprobs": None, "finish_reason": None}
    return _sse_line({**header, "object": "chat.completion.chunk", "choices": [choice], **usage_field})


def _sse_line(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


async def _sse(
    state: ServerState,
    job: Job,
    watcher: asyncio.Task,
    prompt_tokens: int,
    n: int,
    include_usage: bool,
    header: dict,
    log_fields: dict,
    chunk: Any,
    kind: str,
    calls: list[ToolCallStream] | None = None,
) -> AsyncIterator[bytes]:
    """Server-sent events of a job. `chunk(index, text, finish_reason, logprobs)` renders one choice's chunk
    (text None: the opening chunk) as {"object", "choices"}, or None to send nothing; `kind` is the object
    name of the usage chunk."""
    usage_field = {"usage": None} if include_usage else {}

    def line(index: int, text: str | None, finish: str | None = None, logprobs: list | None = None) -> bytes:
        payload = chunk(index, text, finish, logprobs)
        return b"" if payload is None else _sse_line({**header, **payload, **usage_field})

    tokens, reasons = 0, [None] * n
    finished = False
    try:
        for i in range(n):  # every chat choice opens with the role, as OpenAI does
            opening = line(i, None)
            if opening:
                yield opening
        while True:
            event: Event = await job.next_event()
            if event.kind == "delta":
                tokens += event.tokens
                if event.reasoning:  # [THINK] text: its own field in chat, plain text in raw completions
                    if kind == "chat.completion.chunk":
                        yield _reasoning_line(header, usage_field, event.index, event.reasoning)
                    else:
                        yield line(event.index, event.reasoning)
                text = event.text if calls is None else calls[event.index].feed(event.text, event.token_ids)
                if text or event.logprobs:  # logprobs were asked for when the event has them
                    yield line(event.index, text, logprobs=event.logprobs)
            elif event.kind == "finish":
                reason = event.finish_reason
                if calls is not None:
                    rest, found = calls[event.index].finish()
                    if rest:
                        yield line(event.index, rest)
                    for k, call in enumerate(found or []):  # as vLLM: the name first, then the arguments
                        opening = {"index": k, "id": call["id"], "type": "function"}
                        opening["function"] = {"name": call["function"]["name"], "arguments": ""}
                        arguments = {"index": k, "function": {"arguments": call["function"]["arguments"]}}
                        for delta in (opening, arguments):
                            yield _tool_call_line(header, usage_field, event.index, delta)
                    stream = calls[event.index]
                    named = isinstance(stream, ForcedToolCalls) and stream.name is not None
                    reason = "tool_calls" if found and not named else reason
                reasons[event.index] = reason
                yield line(event.index, "", reason)
            elif event.kind == "error":
                assert event.error is not None
                log_fields["error_code"] = event.error.code
                yield _sse_line(event.error.body())
                break
            elif event.kind == "end":
                break
        if include_usage:
            usage = _usage(prompt_tokens, tokens).model_dump()
            yield _sse_line({**header, "object": kind, "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"
        finished = True
    finally:
        job.cancel.set()
        watcher.cancel()
        if not finished:
            log_fields["cancelled"] = True
        _finish_metrics(state, job.arrival, log_fields, tokens, reasons)
