"""The one way to generate: messages in, text out (blocking or streamed).

The CLI, the server and the in-process evaluation backend all call `Engine`. It owns the model, the
tokenizer and the image limits; it turns OpenAI-shaped messages into a prompt (prompt/), runs the decoding
scheduler (continuous batching, KV budget, image and prefix caches), and turns token ids back into text
with stop strings applied. Many threads may call generate/stream at once: their requests are batched.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pixtral.checkpoint.loader import load_model
from pixtral.default_model import UNTRAINED_MARKER, default_model_path
from pixtral.engine.sampling import SamplingParams, TokenLogprobs
from pixtral.engine.scheduler import Finished, Request, Scheduler, SchedulerConfig
from pixtral.engine.structured import Grammars
from pixtral.errors import ContextLengthError, InputError, PixtralError
from pixtral.model.pixtral import Pixtral
from pixtral.prompt.chat import EncodedPrompt, encode_chat
from pixtral.prompt.detokenize import StreamingDetokenizer
from pixtral.prompt.images import DEFAULT_LIMITS, FetchRemote, ImageLimits
from pixtral.prompt.system_prompt import load_system_prompt, with_default_system
from pixtral.prompt.thinking import think_token_ids
from pixtral.prompt.tokenizer import load_tokenizer, tokenizer_checked_config

Messages = Sequence[Mapping[str, Any]]
DEFAULT_SCHEDULER = SchedulerConfig()


@dataclass
class Completion:
    text: str
    token_ids: list[int]  # generated ids, EOS excluded
    prompt_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) | "length" | "cancelled" (the engine was closed)
    reasoning: str = ""  # Magistral: the text of the [THINK] ... [/THINK] blocks (not part of `text`)
    logprobs: list[TokenLogprobs] | None = None  # with params.logprobs: one per id of token_ids


@dataclass
class StreamEvent:
    text: str  # new text since the last event: whole UTF-8 characters only
    token_ids: list[int] = field(default_factory=list)  # ids generated since the last event
    finish_reason: str | None = None  # set on the last event only
    prompt_tokens: int = 0
    reasoning: str = ""  # new [THINK]-block text since the last event (prompt/thinking.py)
    logprobs: list[TokenLogprobs] | None = None  # with params.logprobs: one per id of token_ids


class Engine:
    def __init__(
        self,
        model: Pixtral,
        tokenizer,
        *,
        model_name: str = "pixtral",
        untrained: bool = False,
        limits: ImageLimits = DEFAULT_LIMITS,
        fetch_remote: FetchRemote | None = None,
        scheduler: SchedulerConfig = DEFAULT_SCHEDULER,
        max_image_tokens: int | None = None,
    ) -> None:
        self.model = model
        self.max_image_tokens = max_image_tokens
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.untrained = untrained
        self.limits = limits
        self.fetch_remote = fetch_remote
        self.eos_id = model.config.eos_id
        self.scheduler = Scheduler(model, scheduler)
        self.system_prompt: str | None = None  # the model folder's SYSTEM_PROMPT.txt, for chats without one
        self.think_ids = think_token_ids(tokenizer)  # ([THINK], [/THINK]) of reasoning models, else None
        self._grammars: Grammars | None = None  # structured output's compiler, built on first use

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        limits: ImageLimits = DEFAULT_LIMITS,
        fetch_remote: FetchRemote | None = None,
        scheduler: SchedulerConfig = DEFAULT_SCHEDULER,
        max_image_tokens: int | None = None,
        quantize: str | None = None,
        group_size: int = 128,
    ) -> Engine:
        """A model folder (native or HF format), a hub id, or None for the bundled default model.

        quantize "int8" | "int4": the decoder's linear layers are quantized while loading (engine/quantize.py);
        `dtype` is then the dtype of everything else."""
        path = default_model_path() if model is None else model
        if quantize:
            from pixtral.engine.quantize import load_quantized

            net, ckpt, _ = load_quantized(path, quantize, dtype=dtype, group_size=group_size)
        else:
            net, ckpt = load_model(path, dtype=dtype, device=device)
        tokenizer = load_tokenizer(ckpt.folder, net.config)
        vocab = tokenizer.instruct_tokenizer.tokenizer.n_words
        if vocab > net.config.text.vocab_size:
            raise InputError(
                f"{ckpt.folder}: the tokenizer has {vocab} tokens but the model only {net.config.text.vocab_size}"
            )
        net.config = tokenizer_checked_config(tokenizer, net.config, str(ckpt.folder))  # image ids, settings
        system_prompt = load_system_prompt(ckpt.folder, Path(str(path)).name)  # {name}: as the model cards
        engine = cls(
            net,
            tokenizer,
            model_name=str(model) if model is not None else "default",
            untrained=(ckpt.folder / UNTRAINED_MARKER).exists(),
            limits=limits,
            fetch_remote=fetch_remote,
            scheduler=scheduler,
            max_image_tokens=max_image_tokens,
        )
        engine.system_prompt = system_prompt
        return engine

    def close(self) -> None:
        """Stop the scheduler's thread (also done at interpreter exit); the engine takes no requests after."""
        self.scheduler.close()

    def stats(self) -> dict[str, int]:
        """Queue, KV-memory and cache counters of the scheduler (what /metrics exports)."""
        return self.scheduler.stats()

    @property
    def max_context(self) -> int:
        return self.model.config.text.max_seq_len

    def encode(self, messages: Messages, tools: Sequence[Mapping[str, Any]] | None = None) -> EncodedPrompt:
        """The prompt of a conversation (and the OpenAI-shaped `tools` it may call), as mistral-common
        encodes it."""
        prompt = encode_chat(
            with_default_system(messages, self.system_prompt),
            self.tokenizer,
            limits=self.limits,
            fetch_remote=self.fetch_remote,
            max_image_tokens=self.max_image_tokens,
            tools=tools,
        )
        if len(prompt.token_ids) >= self.max_context:
            raise ContextLengthError(
                f"the prompt has {len(prompt.token_ids)} tokens; this model's context is {self.max_context} "
                "(leave room for at least one generated token)"
            )
        return prompt

    def generate(
        self, messages: Messages, params: SamplingParams | None = None, tools: Sequence[Mapping] | None = None
    ) -> Completion:
        return self._collect(self.stream(messages, params, tools))

    def generate_prompt(self, prompt: EncodedPrompt, params: SamplingParams | None = None) -> Completion:
        """`generate` for a prompt already encoded (raw text completion, /v1/completions)."""
        return self._collect(self.stream_prompt(prompt, params))

    @staticmethod
    def _collect(events: Iterator[StreamEvent]) -> Completion:
        text, reasoning, ids, finish, n_prompt, logprobs = [], [], [], "length", 0, None
        for event in events:
            text.append(event.text)
            reasoning.append(event.reasoning)
            ids += event.token_ids
            n_prompt = event.prompt_tokens
            finish = event.finish_reason or finish
            if event.logprobs is not None:
                logprobs = (logprobs or []) + event.logprobs
        return Completion(
            "".join(text), ids, n_prompt, finish, reasoning="".join(reasoning), logprobs=logprobs
        )

    def stream(
        self, messages: Messages, params: SamplingParams | None = None, tools: Sequence[Mapping] | None = None
    ) -> Iterator[StreamEvent]:
        """Events as text becomes final. Closing the iterator cancels the request and frees its memory."""
        yield from self.stream_prompt(self.encode(messages, tools), params)

    def stream_prompt(
        self, prompt: EncodedPrompt, params: SamplingParams | None = None
    ) -> Iterator[StreamEvent]:
        """`stream` for a prompt already encoded (`encode`, or raw text for /v1/completions)."""
        params = params or SamplingParams()
        params.check_vocab(self.tokenizer.instruct_tokenizer.tokenizer.n_words)
        if params.structured is not None:  # compiled here, in the caller's thread, not in the decode loop
            if self._grammars is None:
                self._grammars = Grammars(self.tokenizer, self.model.config.text.vocab_size, self.eos_id)
            params = replace(params, structured=self._grammars.compile(params.structured))
        if len(prompt.token_ids) >= self.max_context:
            raise ContextLengthError(
                f"the prompt has {len(prompt.token_ids)} tokens; this model's context is {self.max_context} "
                "(leave room for at least one generated token)"
            )
        n_prompt = len(prompt.token_ids)
        max_tokens = min(params.max_tokens, self.max_context - n_prompt)
        params = replace(params, max_tokens=max_tokens, min_tokens=min(params.min_tokens, max_tokens))
        stop_ids = params.stop_ids(self.eos_id)
        request = self.scheduler.submit(prompt.token_ids, prompt.images, params, stop_ids)
        try:
            yield from self._stream_text(request, params, n_prompt)
        finally:
            request.cancel()

    def _stream_text(self, request: Request, params: SamplingParams, n_prompt: int) -> Iterator[StreamEvent]:
        detok = StreamingDetokenizer(self.tokenizer)
        stops = StopStrings(params.stop)
        pending_ids: list[int] = []
        thinking = False  # inside a [THINK] block
        n_seen = 0
        want_logprobs = params.logprobs is not None

        def logprobs() -> list[TokenLogprobs] | None:  # those of pending_ids (the scheduler's are aligned)
            return request.logprobs[n_seen - len(pending_ids) : n_seen] if want_logprobs else None

        while True:
            item = request.events.get()
            if isinstance(item, Finished):
                if item.reason == "error":
                    if isinstance(item.error, PixtralError):
                        raise item.error
                    raise RuntimeError(f"generation failed: {item.error}") from item.error
                finish = item.reason
                break
            pending_ids.append(item)
            n_seen += 1
            if self.think_ids and (item in self.think_ids or thinking):
                # reasoning text bypasses the stop strings; the markers are control tokens (no text)
                piece = detok.push(item)
                if item in self.think_ids:
                    thinking = item == self.think_ids[0]
                if piece or not thinking:
                    yield StreamEvent("", pending_ids, None, n_prompt, reasoning=piece, logprobs=logprobs())
                    pending_ids = []
                continue
            # As vLLM: stop strings are looked for once min_tokens tokens are out.
            safe, stopped = stops.feed(detok.push(item), check=n_seen > params.min_tokens)
            if stopped:
                finish = "stop"
                break
            if safe:
                yield StreamEvent(safe, pending_ids, None, n_prompt, logprobs=logprobs())
                pending_ids = []
        rest = stops.finish("" if stops.stopped else detok.flush())
        yield StreamEvent(rest, pending_ids, finish, n_prompt, logprobs=logprobs())


class StopStrings:
    """Cuts the text at the first stop string, holding back the tail that could still begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = list(stops)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""
        self.stopped = False

    def feed(self, text: str, check: bool = True) -> tuple[str, bool]:
        """Add text; return (text now safe to emit, whether a stop string was hit). With check=False the
        text is not searched yet (min_tokens), though its tail is still held back."""
        self.pending += text
        cut = -1
        if check:
            cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.pending = self.pending[:cut]
            self.stopped = True
            return "", True
        n_safe = max(0, len(self.pending) - self.hold)
        safe, self.pending = self.pending[:n_safe], self.pending[n_safe:]
        return safe, False

    def finish(self, text: str) -> str:
        """The rest of the text at the end of generation (cut at a stop string if one completes)."""
        if not self.stopped:
            self.feed(text)
        out, self.pending = self.pending, ""
        return out
