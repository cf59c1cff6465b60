"""A fake OpenAI-compatible *model and judge* server for tests only (127.0.0.1, random port).

It answers deterministically from the request content: the model looks up the ``[q:ID]`` marker of the last
user message in an oracle; the judge rates the assistant's answer by a hash of its text. Every request is
recorded (path, headers, JSON body) so tests can assert on the wire.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from openai.types.chat import ChatCompletion

MARKER = re.compile(r"\[q:([\w.-]+)\]")
JUDGE_SIGNATURE = "Please act as an impartial judge"


def judge_rating_for(answer: str) -> int:
    return 1 + int(hashlib.sha256(answer.encode()).hexdigest()[:4], 16) % 10


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p.get("type") == "text")


class FakeOpenAIServer:
    def __init__(self, oracle: dict[str, str] | None = None, delay: float = 0.0, port: int = 0) -> None:
        self.port = port
        self.oracle = dict(oracle or {})
        self.delay = delay
        self.requests: list[dict[str, Any]] = []
        self.fail_plan: dict[str, list[int]] = {}  # marker -> HTTP statuses to answer first, in order
        self.judge_overrides: dict[
            str, list[str | None]
        ] = {}  # substring of answer -> judge replies in order
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ answers
    def model_reply(self, body: dict[str, Any]) -> str:
        last_user = [m for m in body["messages"] if m["role"] == "user"][-1]
        m = MARKER.search(_text_of(last_user["content"]))
        return self.oracle.get(m.group(1), "I don't know.") if m else "I don't know."

    def judge_reply(self, body: dict[str, Any]) -> str | None:
        text = _text_of(body["messages"][1]["content"])
        answer = text.split("### Assistant's answer:\n", 1)[1].split("\n\n<|The End", 1)[0]
        for key, replies in self.judge_overrides.items():
            if key in answer and replies:
                return replies.pop(0) if len(replies) > 1 else replies[0]
        return f"The answer is compared with the reference. Rating: [[{judge_rating_for(answer)}]]"

    # ------------------------------------------------------------------ HTTP
    def start(self) -> str:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(
                self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/v1/models"):
                    self._send(200, {"object": "list", "data": [{"id": "fake-pixtral", "object": "model"}]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                is_judge = body["messages"][0]["role"] == "system" and JUDGE_SIGNATURE in _text_of(
                    body["messages"][0]["content"]
                )
                record = {"path": self.path, "headers": dict(self.headers), "body": body, "judge": is_judge,
                          "item": self.headers.get("X-Pixtral-Eval-Item"), "time": time.time()}  # fmt: skip
                with server._lock:
                    server.requests.append(record)
                    marker = record["item"] or ""
                    plan = server.fail_plan.get(marker)
                    status = plan.pop(0) if plan else 200
                if not self.path.endswith("/v1/chat/completions"):
                    self._send(404, {"error": "not found"})
                    return
                if status != 200:
                    self._send(status, {"error": {"message": "injected failure"}}, {"Retry-After": "0"})
                    return
                if server.delay:
                    time.sleep(server.delay)
                text = server.judge_reply(body) if is_judge else server.model_reply(body)
                completion = ChatCompletion(
                    id="chatcmpl-fake", object="chat.completion", created=0, model=body["model"],
                    choices=[{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": text}}],
                    usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                )  # fmt: skip
                self._send(200, completion.model_dump())

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out and hung up is part of the tests

        self._httpd = Server(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def model_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if not r["judge"]]

    def judge_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["judge"]]
