"""The one way to generate: messages in, text out (blocking or streamed).

The CLI, the server and the in-process evaluation backend all call `Engine`. It owns the model, the
tokenizer and the media policy (which image sources it reads, how large); it turns OpenAI-shaped messages
into a prompt (prompt/), runs the decoding scheduler (continuous batching, KV budget, image and prefix
caches), and turns token ids back into text with stop strings applied. Many threads may call
generate/stream at once: their requests are batched. `SamplingParams.n` choices of one prompt cost one
encoding (tokens and image preprocessing), one vision encoder pass and one prefill; choice i is seeded
`seed + i`. The contract the server, the evaluation harness and the test fakes rely on is `EngineClient`
(engine/protocol.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from pixtral.checkpoint.loader import Checkpoint, load_model
from pixtral.default_model import UNTRAINED_MARKER, default_model_path
from pixtral.engine.compute_thread import in_fresh_thread
from pixtral.engine.cpu_kernels import KernelChoice, apply_cpu_kernels_
from pixtral.engine.device import default_dtype, resolve_device
from pixtral.engine.fused_projections import fuse_projections_
from pixtral.engine.sampling import SamplingParams, TokenLogprobs
from pixtral.engine.scheduler import Finished, Request, Scheduler, SchedulerConfig
from pixtral.engine.structured import Grammars
from pixtral.errors import ContextLengthError, InputError, PixtralError
from pixtral.model.pixtral import Pixtral
from pixtral.prompt.chat import EncodedPrompt, encode_chat
from pixtral.prompt.detokenize import StreamingDetokenizer
from pixtral.prompt.images import LOCAL_MEDIA, MediaPolicy
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
    finish_reason: str | None = None  # set on the last event of its choice only
    prompt_tokens: int = 0
    index: int = 0  # the choice (0 .. n - 1) the event belongs to
    reasoning: str = ""  # new [THINK]-block text since the last event (prompt/thinking.py)
    logprobs: list[TokenLogprobs] | None = None  # with params.logprobs: one per id of token_ids


def prepare_for_inference_(model: Pixtral, kernel: str | None = None) -> KernelChoice:
    """What a loaded one-process model gets before serving, in place: its stacked projections
    (engine/fused_projections.py), then the CPU kernels of its linear layers (engine/cpu_kernels.py; layers on
    another device are left as they are). Returns the kernel choice."""
    fuse_projections_(model)
    return apply_cpu_kernels_(model, kernel)


def _load_and_prepare(
    path: str | Path,
    dtype: str,
    device: torch.device,
    quantize: str | None,
    group_size: int,
    kernel: str | None,
) -> tuple[Pixtral, Checkpoint, KernelChoice]:
    """Load (quantizing while loading when asked), then `prepare_for_inference_`."""
    if quantize:
        from pixtral.engine.quantize import load_quantized

        net, ckpt, _ = load_quantized(path, quantize, dtype=dtype, group_size=group_size, device=device)
    else:
        net, ckpt = load_model(path, dtype=dtype, device=device)
    return net, ckpt, prepare_for_inference_(net, kernel)


class Engine:
    def __init__(
        self,
        model: Pixtral,
        tokenizer,
        *,
        model_name: str = "pixtral",
        untrained: bool = False,
        media: MediaPolicy = LOCAL_MEDIA,
        scheduler: SchedulerConfig = DEFAULT_SCHEDULER,
        max_image_tokens: int | None = None,
    ) -> None:
        self.model = model
        self.max_image_tokens = max_image_tokens
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.untrained = untrained
        self.media = media  # which image sources encode() reads (a server's own policy is applied before)
        self.eos_id = model.config.eos_id
        self.scheduler = Scheduler(model, scheduler)
        self.system_prompt: str | None = None  # the model folder's SYSTEM_PROMPT.txt, for chats without one
        self.kernels = None  # the CPU kernels chosen by Engine.load (engine/cpu_kernels.KernelChoice)
        self.think_ids = think_token_ids(tokenizer)  # ([THINK], [/THINK]) of reasoning models, else None
        self._grammars: Grammars | None = None  # structured output's compiler, built on first use
        self.thread_safe = True  # generate/stream may be called from many threads at once (they batch)

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        *,
        dtype: str | None = None,
        device: str = "auto",
        media: MediaPolicy = LOCAL_MEDIA,
        scheduler: SchedulerConfig = DEFAULT_SCHEDULER,
        max_image_tokens: int | None = None,
        quantize: str | None = None,
        group_size: int = 128,
        tensor_parallel_size: int = 1,
        kernel: str | None = None,
    ) -> Engine:
        """A model folder (native or HF format), a hub id, or None for the bundled default model.

        device "auto" | "cpu" | "cuda" | "cuda:N" (auto: CUDA when available); dtype None: bfloat16 on CUDA,
        float32 on the CPU. Everything the engine makes afterwards (KV caches, ids, image tensors, sampling
        generators) is made on the model's device.
        quantize "int8" | "int4": the decoder's linear layers are quantized while loading (engine/quantize.py),
        for the kernels of that device; `dtype` is then the dtype of everything else.
        tensor_parallel_size N > 1: the model is split over N ranks (parallel/launch.py: under torchrun, or
        N - 1 processes started here); this process is rank 0, and on the other ranks of a torchrun group this
        call does not return. The compiled decode step is off.
        kernel "auto" | "onednn" | "aten" (None: $PIXTRAL_KERNEL, else auto): the CPU kernels of the linear
        layers (engine/cpu_kernels.py), one process only (tensor-parallel ranks use ATen's); the choice is in
        `engine.kernels`."""
        path = default_model_path() if model is None else model
        where = resolve_device(device)
        dtype = dtype or default_dtype(where)
        if tensor_parallel_size > 1:
            from pixtral.parallel.launch import LoadSpec, start

            spec = LoadSpec(str(path), dtype, where.type, quantize, group_size)
            net, ckpt = start(spec, tensor_parallel_size)
            scheduler = replace(scheduler, compile=False)  # the ranks follow forwards only
            kernels = None  # the ranks of a group keep separate layers and ATen's kernels
        else:  # one process: loaded and prepared in a thread of its own (engine/compute_thread.py)
            net, ckpt, kernels = in_fresh_thread(
                _load_and_prepare, path, dtype, where, quantize, group_size, kernel
            )
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
            media=media,
            scheduler=scheduler,
            max_image_tokens=max_image_tokens,
        )
        engine.system_prompt = system_prompt
        engine.kernels = kernels
        return engine

    def close(self) -> None:
        """Stop the scheduler's thread (also done at interpreter exit); the engine takes no requests after."""
        self.scheduler.close()
        if hasattr(self.model, "close"):  # a tensor-parallel model stops its other ranks
            self.model.close()

    def stats(self) -> dict[str, int]:
        """Queue, KV-memory and cache counters of the scheduler (what /metrics exports)."""
        return self.scheduler.stats()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def max_context(self) -> int:
        return self.model.config.text.max_seq_len

    def encode(self, messages: Messages, tools: Sequence[Mapping[str, Any]] | None = None) -> EncodedPrompt:
        """The prompt of a conversation (and the OpenAI-shaped `tools` it may call), as mistral-common
        encodes it."""
        prompt = encode_chat(
            with_default_system(messages, self.system_prompt),
            self.tokenizer,
            media=self.media,
            max_image_tokens=self.max_image_tokens,
            tools=tools,
        )
        return self._fitting(prompt)

    def _fitting(self, prompt: EncodedPrompt) -> EncodedPrompt:
        """The prompt, if it leaves room in the context for at least one generated token."""
        if len(prompt.token_ids) >= self.max_context:
            raise ContextLengthError(
                f"the prompt has {len(prompt.token_ids)} tokens; this model's context is {self.max_context} "
                "(leave room for at least one generated token)"
            )
        return prompt

    def generate(
        self,
        request: Messages | EncodedPrompt,
        params: SamplingParams | None = None,
        tools: Sequence[Mapping] | None = None,
    ) -> Completion:
        """One completion (params.n must be 1: `generate_choices` returns n)."""
        params = params or SamplingParams()
        if params.n != 1:
            raise InputError(f"generate returns one completion; n={params.n}: call generate_choices")
        return self.generate_choices(request, params, tools)[0]

    def generate_choices(
        self,
        request: Messages | EncodedPrompt,
        params: SamplingParams | None = None,
        tools: Sequence[Mapping] | None = None,
    ) -> list[Completion]:
        """params.n completions of one prompt, encoded and prefilled once."""
        params = params or SamplingParams()
        parts = [Completion("", [], 0, "length") for _ in range(params.n)]
        for event in self.stream(request, params, tools):
            part = parts[event.index]
            part.text += event.text
            part.reasoning += event.reasoning
            part.token_ids += event.token_ids
            part.prompt_tokens = event.prompt_tokens
            part.finish_reason = event.finish_reason or part.finish_reason
            if event.logprobs is not None:
                part.logprobs = (part.logprobs or []) + event.logprobs
        return parts

    def stream(
        self,
        request: Messages | EncodedPrompt,
        params: SamplingParams | None = None,
        tools: Sequence[Mapping] | None = None,
    ) -> Iterator[StreamEvent]:
        """Events as text becomes final, each tagged with its choice's `index` (n > 1: choices in turn).
        `request`: messages (with the OpenAI-shaped `tools` they may call), or a prompt already encoded by
        `encode` or from raw text (/v1/completions), not encoded again.
        Closing the iterator cancels the request (all its choices) and frees its memory."""
        params = params or SamplingParams()
        # encode() checks the context; a prompt encoded elsewhere (raw text) is checked here
        prompt = self._fitting(request) if isinstance(request, EncodedPrompt) else self.encode(request, tools)
        params.check_vocab(self.tokenizer.instruct_tokenizer.tokenizer.n_words)
        if params.structured is not None:  # compiled here, in the caller's thread, not in the decode loop
            if self._grammars is None:
                self._grammars = Grammars(self.tokenizer, self.model.config.text.vocab_size, self.eos_id)
            params = replace(params, structured=self._grammars.compile(params.structured))
        n_prompt = len(prompt.token_ids)
        max_tokens = min(params.max_tokens, self.max_context - n_prompt)
        params = replace(params, max_tokens=max_tokens, min_tokens=min(params.min_tokens, max_tokens))
        choices = [choice_params(params, i) for i in range(params.n)]
        requests = self.scheduler.submit_choices(
            prompt.token_ids, prompt.images, choices, params.stop_ids(self.eos_id)
        )
        streams = [
            self._stream_text(r, p, n_prompt, i)
            for i, (r, p) in enumerate(zip(requests, choices, strict=True))
        ]
        try:
            if len(streams) == 1:
                yield from streams[0]
                return
            active = list(range(len(streams)))
            while active:  # round robin: the choices decode in the same batch, so none waits long
                for i in list(active):
                    event = next(streams[i])
                    yield event
                    if event.finish_reason is not None:
                        active.remove(i)
        finally:
            for r in requests:
                r.cancel()

    def _stream_text(
        self, request: Request, params: SamplingParams, n_prompt: int, index: int = 0
    ) -> Iterator[StreamEvent]:
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
                    yield StreamEvent("", pending_ids, None, n_prompt, index, piece, logprobs())
                    pending_ids = []
                continue
            # As vLLM: stop strings are looked for once min_tokens tokens are out.
            safe, stopped = stops.feed(detok.push(item), check=n_seen > params.min_tokens)
            if stopped:
                finish = "stop"
                break
            if safe:
                yield StreamEvent(safe, pending_ids, None, n_prompt, index, logprobs=logprobs())
                pending_ids = []
        rest = stops.finish("" if stops.stopped else detok.flush())
        yield StreamEvent(rest, pending_ids, finish, n_prompt, index, logprobs=logprobs())


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """The parameters of choice `index` of n: one choice, seeded seed + index (unseeded stays unseeded)."""
    seed = None if params.seed is None else (params.seed + index) % 2**63
    return replace(params, n=1, seed=seed)


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
