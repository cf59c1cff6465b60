"""OpenAI-compatible chat completions over HTTP: several endpoints, bounded concurrency, retries with backoff.

The request body is the official client's wire format (``model``, ``messages``, ``max_tokens``,
``temperature``); images go as ``image_url`` data URLs of their original bytes.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

from pixtral.evals.errors import BackendError, EvalConfigError
from pixtral.evals.types import Completion, Message, to_openai_messages

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}
FATAL_STATUS = {
    401: "check the API key (--api-key-env / --judge-api-key-env)",
    403: "check the API key and its permissions",
    404: "check the endpoint URL and the model name (--model / --judge-model)",
}


def chat_completions_url(endpoint: str) -> str:
    """``http://host:8000`` / ``.../v1`` / ``.../v1/chat/completions`` → the chat completions URL."""
    url = endpoint.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise EvalConfigError(f"endpoint {endpoint!r} must start with http:// or https://")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


@dataclass
class _Endpoint:
    url: str
    in_flight: int = 0
    cooldown_until: float = 0.0
    served: int = 0


class OpenAIHTTPBackend:
    """One logical model behind one or more OpenAI-compatible endpoints (least-busy load balancing)."""

    def __init__(
        self,
        endpoints: list[str],
        model: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 600.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        wait_s: float = 0.0,
    ) -> None:
        if not endpoints:
            raise EvalConfigError("no endpoint given: pass --endpoint URL (repeatable) or use --in-process")
        if concurrency < 1:
            raise EvalConfigError("--concurrency must be at least 1")
        self._endpoints = [_Endpoint(chat_completions_url(e)) for e in endpoints]
        self.model = model
        self._api_key = api_key
        self._concurrency = concurrency
        self._timeout = timeout
        self._max_retries = max_retries
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._client: httpx.AsyncClient | None = None
        self._sem: asyncio.Semaphore | None = None
        self._rr = 0
        self._wait_s = wait_s
        self.requests_sent = 0

    @property
    def endpoints(self) -> list[str]:
        return [e.url for e in self._endpoints]

    async def __aenter__(self) -> OpenAIHTTPBackend:
        limits = httpx.Limits(
            max_connections=self._concurrency * 2, max_keepalive_connections=self._concurrency
        )
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self._timeout, connect=min(30.0, self._timeout)), limits=limits
        )
        self._sem = asyncio.Semaphore(self._concurrency)
        if self._wait_s > 0:
            await self._wait_until_ready()
        if self.model is None:
            self.model = await self._discover_model()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _headers(self, item_id: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        if item_id:
            headers["X-Pixtral-Eval-Item"] = item_id
        return headers

    def _models_url(self, endpoint: _Endpoint) -> str:
        return endpoint.url.rsplit("/chat/completions", 1)[0] + "/models"

    async def _wait_until_ready(self) -> None:
        """Poll every endpoint's ``GET /models`` until it answers 200 (a server still loading its weights)."""
        assert self._client is not None
        deadline = time.monotonic() + self._wait_s
        for ep in self._endpoints:
            while True:
                try:
                    resp = await self._client.get(self._models_url(ep), headers=self._headers(None))
                    if resp.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise BackendError(f"{self._models_url(ep)} was not ready after {self._wait_s:.0f} s")
                await asyncio.sleep(min(2.0, max(0.05, self._wait_s / 50)))

    async def _discover_model(self) -> str:
        assert self._client is not None
        url = self._models_url(self._endpoints[0])
        try:
            resp = await self._client.get(url, headers=self._headers(None))
            resp.raise_for_status()
            return str(resp.json()["data"][0]["id"])
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise BackendError(f"could not list models at {url} ({exc}); pass --model NAME") from exc

    def _pick(self) -> _Endpoint:
        now = time.monotonic()
        ready = [e for e in self._endpoints if e.cooldown_until <= now] or self._endpoints
        self._rr += 1
        n = len(ready)
        order = [ready[(self._rr + i) % n] for i in range(n)]
        return min(order, key=lambda e: e.in_flight)

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(self._backoff_max, max(0.0, float(retry_after)))
            except ValueError:
                pass
        base = min(self._backoff_max, self._backoff * (2**attempt))
        return base * (0.5 + random.random() / 2)

    async def complete(
        self, messages: list[Message], *, max_tokens: int, temperature: float, item_id: str | None = None
    ) -> Completion:
        """One chat completion; raises BackendError once the retry budget is spent or on a 4xx."""
        assert self._client is not None and self._sem is not None, "use `async with OpenAIHTTPBackend(...)`"
        body = {
            "model": self.model,
            "messages": to_openai_messages(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        last_error = ""
        async with self._sem:
            for attempt in range(self._max_retries + 1):
                ep = self._pick()
                ep.in_flight += 1
                retry_after = None
                try:
                    self.requests_sent += 1
                    resp = await asyncio.wait_for(  # the whole request, not only each read, within --timeout
                        self._client.post(ep.url, json=body, headers=self._headers(item_id)), self._timeout
                    )
                except (
                    httpx.TransportError,
                    asyncio.TimeoutError,
                ) as exc:  # refused/reset connections, timeouts
                    last_error = f"{type(exc).__name__}: {exc or f'no answer within {self._timeout:g} s'}"
                else:
                    if resp.status_code == 200:
                        ep.served += 1
                        return _parse_completion(resp, ep.url)
                    last_error = f"HTTP {resp.status_code}: {resp.text[:300]}"
                    if (
                        resp.status_code in FATAL_STATUS
                    ):  # every request would fail the same way: stop the run
                        raise EvalConfigError(
                            f"{ep.url} answered {last_error}; {FATAL_STATUS[resp.status_code]}"
                        )
                    if resp.status_code not in RETRYABLE_STATUS:
                        raise BackendError(f"{ep.url} rejected the request for {item_id}: {last_error}")
                    retry_after = resp.headers.get("retry-after")
                finally:
                    ep.in_flight -= 1
                if attempt == self._max_retries:
                    break
                delay = self._delay(attempt, retry_after)
                ep.cooldown_until = time.monotonic() + delay
                await asyncio.sleep(delay)
        raise BackendError(
            f"{item_id}: gave up after {self._max_retries + 1} attempts; last error: {last_error}"
        )


def _parse_completion(resp: httpx.Response, url: str) -> Completion:
    try:
        data = resp.json()
        choice = data["choices"][0]
        text = choice["message"].get("content")
        usage = data.get("usage") or {}
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise BackendError(f"{url} returned a body that is not a chat completion: {resp.text[:200]}") from exc
    return Completion(
        text=text,
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        endpoint=url,
    )
