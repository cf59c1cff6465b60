"""Our own engine, in this process, through its public API (docs/contracts.md): ``Engine.load`` / ``generate``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from pixtral.evals.errors import BackendError
from pixtral.evals.types import Completion, Message, to_openai_messages

if TYPE_CHECKING:  # the HTTP path must not import torch
    from pixtral.engine.protocol import EngineClient


class InProcessBackend:
    """Runs ``pixtral.engine.Engine.generate`` in a worker thread, one request at a time."""

    def __init__(
        self,
        model: str | None = None,
        dtype: str | None = None,
        device: str | None = None,
        tensor_parallel_size: int = 1,
    ) -> None:
        self._load_kwargs: dict[str, Any] = {"model": model, "tensor_parallel_size": tensor_parallel_size}
        if dtype:
            self._load_kwargs["dtype"] = dtype
        if device:
            self._load_kwargs["device"] = device
        self._engine: EngineClient | None = None
        self._lock = asyncio.Lock()
        self.model: str | None = None
        self.requests_sent = 0
        self.endpoints = ["in-process"]
        self.untrained = False

    async def __aenter__(self) -> InProcessBackend:
        try:
            from pixtral.engine import Engine  # imported lazily: the HTTP path must not need torch
        except ImportError as exc:
            raise BackendError(f"the in-process backend needs pixtral.engine ({exc})") from exc
        self._engine = await asyncio.to_thread(Engine.load, **self._load_kwargs)
        self.model = str(self._engine.model_name)
        self.untrained = bool(self._engine.untrained)  # random weights: recorded in provenance
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._engine = None

    async def complete(
        self, messages: list[Message], *, max_tokens: int, temperature: float, item_id: str | None = None
    ) -> Completion:
        from pixtral.engine import SamplingParams  # lazy, as Engine above

        params = SamplingParams(max_tokens=max_tokens, temperature=temperature)
        async with self._lock:
            self.requests_sent += 1
            try:
                out = await asyncio.to_thread(self._engine.generate, to_openai_messages(messages), params)
            except Exception as exc:  # one bad item must not kill the run; the runner records it
                raise BackendError(f"{item_id}: the engine failed: {type(exc).__name__}: {exc}") from exc
        return Completion(
            text=out.text,
            finish_reason=out.finish_reason,
            prompt_tokens=out.prompt_tokens,
            completion_tokens=len(out.token_ids),
            endpoint="in-process",
        )
