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
from pixtral.serve import protocol as P
from pixtral.serve.access_log import AccessLogMiddleware
from pixtral.serve.errors import APIError, bad_request, install_error_handlers
from pixtral.serve.limits import BodyLimitMiddleware
from pixtral.serve.media import check_request_shape, to_engine_messages
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
        if self.fetcher is None and settings.allow_remote_media:
            self.fetcher = RemoteMediaFetcher(
                max_bytes=settings.max_image_bytes,
                timeout_s=settings.remote_timeout_s,
                max_redirects=settings.remote_max_redirects,
                allowed_domains=settings.allowed_media_domains,
            )
        self._key_digest = hashlib.sha256(settings.api_key.encode()).digest() if settings.api_key else None
        if engine is not None:
            self.set_engine(engine)

    def set_engine(self, engine: EngineClient) -> None:
        self.engine = engine
        self.worker = EngineWorker(engine, self.settings, self.metrics)
        self.metrics.engine_stats = engine.stats

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

    return app


def _model_card(state: ServerState) -> P.ModelCard:
    return P.ModelCard(
        id=state.model_name,
        created=state.started,
        max_model_len=None if state.engine is None else int(state.engine.max_context),
    )


def _validate(state: ServerState, body: P.ChatCompletionRequest) -> int:
    settings = state.settings
    if body.model and body.model != state.model_name:
        raise APIError(
            404,
            f"The model {body.model!r} does not exist; this server serves "
            f"{state.model_name!r} (see GET /v1/models).",
            param="model",
            code="model_not_found",
        )
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
    return check_request_shape(body, settings)


async def _chat(state: ServerState, body: P.ChatCompletionRequest, request: Request) -> Response:
    arrival = time.monotonic()
    log_fields: dict = request.scope.setdefault("state", {}).setdefault("log", {})
    log_fields.update(stream=body.stream, n=body.n)
    worker = state.ready_worker()
    n_images = _validate(state, body)
    log_fields["images"] = n_images
    ticket = worker.admit()  # 429 before any image is decoded
    try:
        messages = await run_in_threadpool(to_engine_messages, body, state.settings, state.fetcher)
        spec = GenerationSpec(
            messages=messages,
            n=body.n,
            max_tokens=body.requested_max_tokens(),
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            seed=body.seed,
            stop=body.stop_list(),
        )
        job = worker.submit(ticket, spec, arrival)
    except BaseException:
        ticket.release()
        raise
    state.metrics.images.inc(n_images)
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
    log_fields["prompt_tokens"] = first.prompt_tokens
    completion_id, created = P.new_completion_id(), P.now()
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = _sse(
            state,
            job,
            watcher,
            first.prompt_tokens,
            body.n,
            include_usage,
            completion_id,
            created,
            log_fields,
        )
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        texts, reasons, tokens = [""] * body.n, [None] * body.n, 0
        while True:
            event = await job.next_event()
            if event.kind == "delta":
                texts[event.index] += event.text
                tokens += event.tokens
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
    _finish_metrics(state, arrival, log_fields, tokens, reasons)
    usage = P.Usage(
        prompt_tokens=first.prompt_tokens, completion_tokens=tokens, total_tokens=first.prompt_tokens + tokens
    )
    result = P.ChatCompletion(
        id=completion_id,
        created=created,
        model=state.model_name,
        usage=usage,
        choices=[
            P.Choice(index=i, message=P.AssistantMessage(content=texts[i]), finish_reason=reasons[i])
            for i in range(body.n)
        ],
    )
    return JSONResponse(result.model_dump())


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


def _sse_line(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


async def _sse(
    state: ServerState,
    job: Job,
    watcher: asyncio.Task,
    prompt_tokens: int,
    n: int,
    include_usage: bool,
    completion_id: str,
    created: int,
    log_fields: dict,
) -> AsyncIterator[bytes]:
    model = state.model_name
    usage_field = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict, finish_reason: str | None = None) -> bytes:
        return _sse_line(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [
                    {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
                **usage_field,
            }
        )

    tokens, reasons = 0, [None] * n
    started: set[int] = set()
    finished = False
    try:
        for i in range(n):  # every choice opens with the role, as OpenAI does
            started.add(i)
            yield chunk(i, {"role": "assistant", "content": ""})
        while True:
            event: Event = await job.next_event()
            if event.kind == "delta":
                tokens += event.tokens
                if event.text:
                    yield chunk(event.index, {"content": event.text})
            elif event.kind == "finish":
                reasons[event.index] = event.finish_reason
                yield chunk(event.index, {}, event.finish_reason)
            elif event.kind == "error":
                assert event.error is not None
                log_fields["error_code"] = event.error.code
                yield _sse_line(event.error.body())
                break
            elif event.kind == "end":
                break
        if include_usage:
            yield _sse_line(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": tokens,
                        "total_tokens": prompt_tokens + tokens,
                    },
                }
            )
        yield b"data: [DONE]\n\n"
        finished = True
    finally:
        job.cancel.set()
        watcher.cancel()
        if not finished:
            log_fields["cancelled"] = True
        _finish_metrics(state, job.arrival, log_fields, tokens, reasons)
