"""A stand-in with the engine's interface (`pixtral.engine.EngineClient`), for unit tests of the server's own
logic (limits, queueing, cancellation, errors) only. The end-to-end tests use the real engine on the tiny
model."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from pixtral.prompt.chat import EncodedPrompt, encode_chat
from pixtral.prompt.tokenizer import packaged_tokenizer


@dataclass
class FakeEvent:
    text: str
    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int
    index: int = 0
    reasoning: str = ""
    logprobs: list | None = None


@dataclass
class FakeCompletion:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str


@dataclass
class FakeEngine:
    model_name: str = "fake-pixtral"
    untrained: bool = False
    thread_safe: bool = True
    max_context: int = 4096
    reply: str = "hello world, this is a fake reply"
    delay_s: float = 0.0  # per token
    running: int = 0
    started: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    params: list = field(default_factory=list)  # the SamplingParams of every stream, in order

    @property
    def tokenizer(self):
        return packaged_tokenizer()

    def encode(self, messages, tools=None):
        return encode_chat(messages, packaged_tokenizer(), tools=tools)

    def stream(self, request, params, tools=None):
        """Choices one after the other (the real engine interleaves them; the server handles either)."""
        prompt = request if isinstance(request, EncodedPrompt) else self.encode(request, tools)
        self.params.append(params)
        for index in range(getattr(params, "n", 1)):
            yield from self._stream_one(len(prompt.token_ids), params, index)

    def generate(self, request, params, tools=None):
        return self.generate_choices(request, params, tools)[0]

    def generate_choices(self, request, params, tools=None):
        out = [FakeCompletion("", [], 0, "stop") for _ in range(getattr(params, "n", 1))]
        for event in self.stream(request, params, tools):
            done = out[event.index]
            done.text += event.text
            done.token_ids += event.token_ids
            done.prompt_tokens = event.prompt_tokens
            done.finish_reason = event.finish_reason or done.finish_reason
        return out

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass

    def _stream_one(self, prompt_tokens: int, params, index: int):
        words = (self.reply.split(" ") * 1000)[: params.max_tokens]
        with self.lock:
            self.running += 1
            self.started += 1
        try:
            for i, word in enumerate(words):
                if self.delay_s:
                    time.sleep(self.delay_s)
                last = i == len(words) - 1
                reason = None
                if last:
                    reason = "length" if len(words) == params.max_tokens else "stop"
                yield FakeEvent((" " if i else "") + word, [1000 + i], reason, prompt_tokens, index)
        finally:
            with self.lock:
                self.running -= 1
