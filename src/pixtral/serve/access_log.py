"""Structured (one JSON object per line) access logs. Never the body: no prompts, no image bytes."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pixtral.serve.metrics import ServerMetrics

access_log = logging.getLogger("pixtral.serve.access")

# Fields a handler may add to scope["state"]["log"] for the access line (numbers and short strings only).
LOG_FIELDS = (
    "model",
    "stream",
    "n",
    "images",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
    "error_code",
    "cancelled",
    "queue_s",
)
_KNOWN_PATHS = ("/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/openapi.json", "/docs")


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServerMetrics, enabled: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = uuid.uuid4().hex[:16]
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["log"] = {}
        status = 500
        bytes_out = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status, bytes_out
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body":
                bytes_out += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            label = path if path in _KNOWN_PATHS or path.startswith("/static/") else "other"
            if label.startswith("/static/"):
                label = "/static"
            self.metrics.requests.inc(1, label, str(status))
            if self.enabled:
                record: dict[str, Any] = {
                    "ts": round(time.time(), 3),
                    "request_id": request_id,
                    "client": (scope.get("client") or ("-", 0))[0],
                    "method": scope.get("method"),
                    "path": path[:200],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - start) * 1000, 2),
                    "bytes_in": state.get("body_bytes", 0),
                    "bytes_out": bytes_out,
                }
                if state.get("rejected"):
                    record["rejected"] = state["rejected"]
                for key in LOG_FIELDS:
                    value = state["log"].get(key)
                    if value is not None:
                        record[key] = value
                access_log.info(json.dumps(record, separators=(",", ":")))
