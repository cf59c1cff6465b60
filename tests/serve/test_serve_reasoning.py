"""Reasoning models (Magistral): the engine's [THINK]-block text reaches the API as `reasoning_content`
(vLLM's field) in the message and in chunks of its own; answers without reasoning keep their exact shape."""

from __future__ import annotations

import json
from dataclasses import dataclass

from fastapi.testclient import TestClient

from pixtral.prompt.chat import EncodedPrompt
from pixtral.serve import ServeSettings, create_app
from tests.serve.fake_engine import FakeEngine

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Hello"}]


@dataclass
class ReasoningEvent:
    text: str
    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int
    reasoning: str = ""
    index: int = 0
    logprobs: list | None = None


class ThinkingEngine(FakeEngine):
    """Streams "Let me think." as reasoning (two events), then the answer "Four." (engine/engine.py's split)."""

    def stream(self, request, params, tools=None):
        n = len((request if isinstance(request, EncodedPrompt) else self.encode(request)).token_ids)
        yield ReasoningEvent("", [34, 1001], None, n, reasoning="Let me ")
        yield ReasoningEvent("", [1002, 35], None, n, reasoning="think.")
        yield ReasoningEvent("Four.", [1003], "stop", n)


def client():
    return TestClient(create_app(ThinkingEngine(), ServeSettings(access_log=False)))


def test_message_has_reasoning_content():
    with client() as c:
        body = c.post(CHAT, json={"messages": HELLO}).json()
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Four.",
        "reasoning_content": "Let me think.",
    }
    assert body["usage"]["completion_tokens"] == 5


def test_stream_sends_reasoning_chunks_before_the_answer():
    with client() as c:
        text = c.post(CHAT, json={"messages": HELLO, "stream": True}).text
    deltas = [
        json.loads(b[len("data: ") :])["choices"][0]["delta"]
        for b in text.strip().split("\n\n")
        if b != "data: [DONE]"
    ]
    assert [d for d in deltas if "reasoning_content" in d] == [
        {"reasoning_content": "Let me "},
        {"reasoning_content": "think."},
    ]
    assert "".join(d.get("content") or "" for d in deltas) == "Four."
    first_answer = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert all("reasoning_content" not in d for d in deltas[first_answer:])
