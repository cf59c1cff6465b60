"""The engine's contract: what the server, the in-process evaluation backend and the test fakes rely on.

`Engine` implements it; a stand-in (a fake for the server's unit tests, a remote client) implements the same
and is checked against it (`isinstance(x, EngineClient)` checks the names; the type checker the signatures).
Nothing is probed with getattr: an engine has every member below.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # the contract itself needs no torch
    from pixtral.engine.engine import Completion, StreamEvent
    from pixtral.engine.sampling import SamplingParams
    from pixtral.prompt.chat import EncodedPrompt

Messages = Sequence[Mapping[str, Any]]
Tools = Sequence[Mapping[str, Any]] | None  # OpenAI-shaped tool definitions the messages may call


@runtime_checkable
class EngineClient(Protocol):
    model_name: str  # what clients call the model
    untrained: bool  # random weights: its output is noise (recorded in evaluation provenance)
    thread_safe: bool  # generate/stream may be called from many threads at once

    @property
    def max_context(self) -> int:
        """Prompt + generated tokens the model takes."""
        ...

    @property
    def tokenizer(self) -> Any:
        """The mistral-common tokenizer (the server's /tokenize, /detokenize and logprob tokens use it)."""
        ...

    def encode(self, messages: Messages, tools: Tools = None) -> EncodedPrompt:
        """Messages -> token ids and preprocessed images; InputError / ContextLengthError when it cannot."""
        ...

    def stream(
        self, request: Messages | EncodedPrompt, params: SamplingParams | None = None, tools: Tools = None
    ) -> Iterator[StreamEvent]:
        """Text deltas of params.n choices (StreamEvent.index), each ending with its finish_reason;
        `request` may be an already encoded prompt (not encoded again). Closing the iterator cancels."""
        ...

    def generate(
        self, request: Messages | EncodedPrompt, params: SamplingParams | None = None, tools: Tools = None
    ) -> Completion:
        """One completion (params.n == 1)."""
        ...

    def generate_choices(
        self, request: Messages | EncodedPrompt, params: SamplingParams | None = None, tools: Tools = None
    ) -> list[Completion]:
        """params.n completions of one prompt, encoded once."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters for /metrics (queue, KV memory, caches)."""
        ...

    def close(self) -> None:
        """Stop; in-flight requests finish "cancelled", new ones raise."""
        ...
