"""Serialised access to the engine: admission (429 when full), a worker thread, cancellation, timeouts.

`max_concurrency` threads run engine calls (one, when the engine is not thread-safe; the batching engine
batches whatever these threads submit). A request first takes a slot (`admit`), which fails at once when
`max_concurrency + max_queue` requests are already admitted; then its job waits for a thread. Events flow back to the event loop through an asyncio queue. Cancelling a job
(client gone, timeout) makes the thread close the engine's stream iterator, which stops the generation.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pixtral.engine.protocol import EngineClient
from pixtral.engine.sampling import GREEDY_BELOW_TEMPERATURE, SamplingParams
from pixtral.errors import InputError
from pixtral.serve.errors import APIError, input_error
from pixtral.serve.metrics import ServerMetrics

log = logging.getLogger("pixtral.serve")


@dataclass
class GenerationSpec:
    """What to generate: engine-ready messages and the sampling request (one entry per choice)."""

    messages: list[dict]
    n: int
    max_tokens: int | None  # None: the server's default, clipped to the context left
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: list[str]
    # More SamplingParams fields (penalties, min_p, logit_bias, min_tokens, ignore_eos, stop_token_ids,
    # logprobs), set only when the request asks for them.
    extras: dict[str, Any] = field(default_factory=dict)
    prompt: Any = None  # an EncodedPrompt (raw text completion): used instead of encoding `messages`
    tools: list[dict] | None = None  # OpenAI-shaped function definitions, encoded into the prompt


@dataclass
class Event:
    kind: str  # "prompt" | "delta" | "finish" | "error" | "end"
    index: int = 0
    text: str = ""
    reasoning: str = ""  # [THINK]-block text (reasoning models)
    tokens: int = 0
    finish_reason: str | None = None
    prompt_tokens: int = 0
    error: APIError | None = None
    logprobs: list | None = None  # TokenLogprobs of the delta's tokens, when asked for
    token_ids: list[int] = field(default_factory=list)  # the delta's token ids


@dataclass
class Job:
    spec: GenerationSpec
    arrival: float
    deadline: float
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    first_token_at: float | None = None

    def emit(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel.set()

    async def next_event(self) -> Event:
        return await self.queue.get()


class Ticket:
    """An admitted request's slot; `release()` is idempotent."""

    def __init__(self, worker: EngineWorker):
        self._worker = worker
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._worker._release()


# Below this, sampling is greedy: a top_p this small keeps only the most likely token anyway (the engine's
# own threshold for the temperature is GREEDY_BELOW_TEMPERATURE).
GREEDY_BELOW_TOP_P = 1e-6


def engine_is_thread_safe(engine: EngineClient) -> bool:
    """An engine says so with `thread_safe`; the batching engine is."""
    return bool(engine.thread_safe)


class EngineWorker:
    def __init__(self, engine: EngineClient, settings: Any, metrics: ServerMetrics):
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        workers = settings.max_concurrency
        if workers > 1 and not engine_is_thread_safe(engine):
            log.warning("the engine is not thread-safe: running one generation at a time, not %d", workers)
            workers = 1
        self.capacity = workers + settings.max_queue
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pixtral-engine")
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = 0
        self._idle = threading.Condition(self._lock)
        metrics.queued.read_from(lambda: max(0, self._admitted - self._running))
        metrics.running.read_from(lambda: self._running)

    # --- admission -----------------------------------------------------------------------------------
    @property
    def admitted(self) -> int:
        return self._admitted

    def admit(self) -> Ticket:
        with self._lock:
            if self._admitted >= self.capacity:
                self.metrics.rejected.inc(1, "queue_full")
                raise APIError(
                    429,
                    f"The server is busy: {self._admitted} requests are running or queued "
                    f"(limit {self.capacity}). Retry after a moment.",
                    code="server_busy",
                    headers={"Retry-After": "1"},
                )
            self._admitted += 1
        return Ticket(self)

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no request is admitted (or the timeout); True when idle."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._admitted > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def submit(self, ticket: Ticket, spec: GenerationSpec, arrival: float) -> Job:
        job = Job(
            spec=spec,
            arrival=arrival,
            deadline=arrival + self.settings.request_timeout_s,
            loop=asyncio.get_running_loop(),
        )
        try:
            self._executor.submit(self._run, job, ticket)
        except RuntimeError as e:  # executor shut down: the server is stopping
            ticket.release()
            raise APIError(503, "The server is shutting down; retry on another instance.") from e
        return job

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- the engine thread ----------------------------------------------------------------------------
    def _run(self, job: Job, ticket: Ticket) -> None:
        started = time.monotonic()
        self.metrics.queue_time.observe(started - job.arrival)
        with self._lock:
            self._running += 1
        try:
            if job.cancel.is_set():
                self.metrics.cancelled.inc()
                return
            if started > job.deadline:
                self.metrics.timeouts.inc()
                job.emit(Event("error", error=_timeout(self.settings.request_timeout_s)))
                return
            self._generate(job)
        except InputError as e:
            job.emit(Event("error", error=input_error(e)))
        except APIError as e:
            job.emit(Event("error", error=e))
        except Exception:
            log.exception("generation failed")
            job.emit(
                Event("error", error=APIError(500, "The generation failed; the server log has details."))
            )
        finally:
            with self._lock:
                self._running -= 1
            ticket.release()
            job.emit(Event("end"))

    def _generate(self, job: Job) -> None:
        spec, engine = job.spec, self.engine
        if spec.prompt is not None:
            encoded = spec.prompt
        elif spec.tools:
            encoded = engine.encode(spec.messages, tools=spec.tools)
        else:
            encoded = engine.encode(spec.messages)
        prompt_tokens = len(encoded.token_ids)
        context = int(engine.max_context)
        max_tokens = self._check_lengths(prompt_tokens, context, spec.max_tokens)
        self.metrics.prompt_tokens.inc(prompt_tokens)
        self.metrics.prompt_len.observe(prompt_tokens)
        job.emit(Event("prompt", prompt_tokens=prompt_tokens))

        # One engine stream for the n choices (the prompt encoded above, tools included, is not encoded again;
        # the engine prefills it once and decodes the choices in one batch). Closing the stream cancels them all.
        stream = engine.stream(encoded, self._params(spec, max_tokens))
        generated = 0
        active = set(range(spec.n))
        try:
            for event in stream:
                index = event.index
                if job.cancel.is_set():
                    self.metrics.cancelled.inc()
                    return
                if time.monotonic() > job.deadline:
                    self.metrics.timeouts.inc()
                    job.emit(Event("error", error=_timeout(self.settings.request_timeout_s)))
                    return
                n_tokens = len(event.token_ids)
                if n_tokens and job.first_token_at is None:
                    job.first_token_at = time.monotonic()
                    self.metrics.ttft.observe(job.first_token_at - job.arrival)
                generated += n_tokens
                self.metrics.generation_tokens.inc(n_tokens)
                if event.text or event.reasoning or n_tokens:
                    job.emit(
                        Event(
                            "delta",
                            index=index,
                            text=event.text,
                            reasoning=event.reasoning,
                            tokens=n_tokens,
                            logprobs=event.logprobs,
                            token_ids=list(event.token_ids),
                        )
                    )
                if event.finish_reason is not None:
                    active.discard(index)
                    self.metrics.finished.inc(1, event.finish_reason)
                    job.emit(Event("finish", index=index, finish_reason=event.finish_reason))
            for index in sorted(active):  # ended without a finish reason (should not happen)
                job.emit(Event("finish", index=index, finish_reason="stop"))
        finally:
            stream.close()  # cancels the generation if it is still running
        self.metrics.output_len.observe(generated)

    @staticmethod
    def _params(spec: GenerationSpec, max_tokens: int) -> Any:
        """The sampling parameters of all n choices (the engine seeds choice i with seed + i)."""
        greedy = spec.temperature < GREEDY_BELOW_TEMPERATURE or spec.top_p < GREEDY_BELOW_TOP_P
        extras = dict(spec.extras)
        if "min_tokens" in extras:  # an explicit max_tokens below it was refused; the default may be less
            extras["min_tokens"] = min(extras["min_tokens"], max_tokens)
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=0.0 if greedy else spec.temperature,
            top_p=1.0 if greedy else spec.top_p,
            top_k=max(spec.top_k, 0),
            seed=spec.seed,
            n=spec.n,
            stop=list(spec.stop),
            **extras,
        )

    def _check_lengths(self, prompt_tokens: int, context: int, requested: int | None) -> int:
        limit = min(self.settings.max_prompt_tokens or context, context)
        if prompt_tokens > limit or prompt_tokens >= context:
            self.metrics.rejected.inc(1, "prompt_too_long")
            raise APIError(
                400,
                f"The prompt is {prompt_tokens} tokens, over the limit of {min(limit, context - 1)} "
                f"(the model's context is {context} tokens). Shorten the text, send fewer or smaller images "
                "(a 1024x1024 image costs about 4,160 tokens), or drop earlier turns.",
                param="messages",
                code="context_length_exceeded",
            )
        if requested is None:
            return max(1, min(self.settings.default_max_tokens, context - prompt_tokens))
        if prompt_tokens + requested > context:
            self.metrics.rejected.inc(1, "prompt_too_long")
            raise APIError(
                400,
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{prompt_tokens + requested} tokens ({prompt_tokens} in the messages, {requested} in the "
                "completion). Reduce max_tokens or the length of the messages.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return requested


def _timeout(seconds: float) -> APIError:
    return APIError(
        504,
        f"The request took longer than the server's request timeout of {seconds:g} s; ask for fewer "
        "tokens or retry when the server is less busy.",
        code="timeout",
    )
