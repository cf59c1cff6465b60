"""A stand-in with the engine's interface, for unit tests of the server's own logic (limits, queueing,
cancellation, errors) only. The end-to-end tests use the real engine on the tiny model."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from pixtral.prompt.chat import encode_chat
from pixtral.prompt.tokenizer import packaged_tokenizer


@dataclass
class FakeEvent:
    text: str
    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int


@dataclass
class FakeEngine:
    model_name: str = "fake-pixtral"
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

    def encode(self, messages):
        return encode_chat(messages, packaged_tokenizer())

    def stream(self, messages, params):
        prompt_tokens = len(self.encode(messages).token_ids)
        self.params.append(params)
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
                yield FakeEvent((" " if i else "") + word, [1000 + i], reason, prompt_tokens)
        finally:
            with self.lock:
                self.running -= 1
