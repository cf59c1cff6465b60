"""ASGI middleware that reads a request body under a byte cap and a time cap before the app sees it.

Bodies over the cap get 413 without being read further (a declared Content-Length over the cap is refused
without reading at all); a client that trickles its body slower than the time cap gets 408. The buffered
body is then replayed to the app, and later `receive()` calls go to the server so that a client disconnect
is still seen by the app.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


async def _send_error(send: Send, status: int, message: str, code: str) -> None:
    kind = "invalid_request_error" if status != 408 else "timeout_error"
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, read_timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        too_large = (
            f"The request body is larger than this server's limit of {limit:,} bytes; send fewer "
            "or smaller images (resize them to at most 1024 pixels a side)."
        )
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_error(send, 400, "Invalid Content-Length header.", "invalid_header")
                    return
                if declared > limit:
                    _note(scope, "body_too_large")
                    await _send_error(send, 413, too_large, "request_too_large")
                    return
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                _note(scope, "body_timeout")
                await _send_error(
                    send,
                    408,
                    f"The request body was not received within {self.read_timeout_s:g} s.",
                    "body_timeout",
                )
                return
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                _note(scope, "body_too_large")
                await _send_error(send, 413, too_large, "request_too_large")
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        scope.setdefault("state", {})["body_bytes"] = size
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _note(scope: Scope, reason: str) -> None:
    state: dict[str, Any] = scope.setdefault("state", {})
    state["rejected"] = reason
