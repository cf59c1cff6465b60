"""Lifecycle on the real engine: a client that drops mid-stream leaves no generation behind; SIGTERM
drains in-flight requests and exits; access logs are structured and carry no image bytes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.serve.serve_helpers import (
    REPO,
    data_url,
    free_port,
    image_message,
    metric,
    png_bytes,
    wait_healthy,
)

CHAT = "/v1/chat/completions"


def test_disconnect_mid_stream_cancels_the_generation(live_url):
    before = httpx.get(live_url + "/metrics").text
    cancelled_before = metric(before, "pixtral_cancelled_generations_total")
    with httpx.stream(
        "POST",
        live_url + CHAT,
        timeout=60,
        json={
            "messages": [{"role": "user", "content": "Write a very long essay."}],
            "max_tokens": 4000,
            "stream": True,
            "temperature": 0,
        },
    ) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        seen = 0
        while seen < 5:
            if next(lines).startswith("data: "):
                seen += 1
        during = httpx.get(live_url + "/metrics").text
        assert metric(during, "pixtral_running_generations") == 1
    # the connection is closed here, about 4,000 tokens early
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        after = httpx.get(live_url + "/metrics").text
        if metric(after, "pixtral_running_generations") == 0:
            break
        time.sleep(0.05)
    assert metric(after, "pixtral_running_generations") == 0
    assert metric(after, "pixtral_queued_requests") == 0
    deadline = time.monotonic() + 5  # the engine's scheduler drops the cancelled request at its next step
    while metric(after, "pixtral_engine_requests_running") and time.monotonic() < deadline:
        time.sleep(0.05)
        after = httpx.get(live_url + "/metrics").text
    assert metric(after, "pixtral_engine_requests_running") == 0
    assert metric(after, "pixtral_engine_requests_waiting") == 0
    assert metric(after, "pixtral_cancelled_generations_total") == cancelled_before + 1
    tokens = metric(after, "pixtral_generation_tokens_total")
    time.sleep(0.5)
    assert metric(httpx.get(live_url + "/metrics").text, "pixtral_generation_tokens_total") == tokens
    # the engine is free again at once
    t0 = time.monotonic()
    r = httpx.post(
        live_url + CHAT, json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, timeout=60
    )
    assert r.status_code == 200 and time.monotonic() - t0 < 10


def test_sigterm_drains_in_flight_requests_then_exits(tiny_model_dir, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pixtral.serve",
                "--model",
                str(tiny_model_dir),
                "--port",
                str(port),
                "--served-model-name",
                "tiny",
                "--drain-timeout",
                "60",
            ],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_healthy(base, timeout=120, proc=proc)
            image = data_url(png_bytes(32, 32))
            r = httpx.post(
                base + CHAT,
                timeout=60,
                json={"model": "tiny", "messages": [image_message(image)], "max_tokens": 2},
            )
            assert r.status_code == 200
            received: list[str] = []

            def stream() -> None:
                with httpx.stream(
                    "POST",
                    base + CHAT,
                    timeout=120,
                    json={
                        "messages": [{"role": "user", "content": "Go on."}],
                        "max_tokens": 150,
                        "stream": True,
                        "temperature": 0,
                        "stream_options": {"include_usage": True},
                    },
                ) as resp:
                    for line in resp.iter_lines():
                        if line:
                            received.append(line)

            thread = threading.Thread(target=stream)
            thread.start()
            while len(received) < 3:
                time.sleep(0.01)
                assert thread.is_alive() or len(received) >= 3
            proc.send_signal(signal.SIGTERM)
            thread.join(timeout=120)
            assert received[-1] == "data: [DONE]", received[-3:]
            usage = json.loads(received[-2][len("data: ") :])["usage"]
            assert usage["completion_tokens"] == 150  # the in-flight stream ran to its end
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    log = log_path.read_text()
    access = [
        json.loads(line.split("pixtral.serve.access: ", 1)[1])
        for line in log.splitlines()
        if "pixtral.serve.access: " in line
    ]
    chats = [a for a in access if a["path"] == CHAT]
    assert len(chats) == 2
    assert chats[0]["images"] == 1 and chats[0]["status"] == 200 and chats[0]["prompt_tokens"] > 0
    assert chats[1]["completion_tokens"] == 150 and chats[1]["stream"] is True
    assert image.split(",", 1)[1][:40] not in log  # no image bytes in any log line
    assert "Go on." not in log  # nor prompt text


# --- failures before serving: one clear line, a non-zero status, no traceback, no abort, no hang -------------


def serve_process(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "pixtral.serve", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def assert_one_clear_error(result: subprocess.CompletedProcess, needle: str) -> None:
    stderr = result.stderr
    assert result.returncode in (1, 2), (result.returncode, stderr)
    assert "Traceback" not in stderr and "terminate called" not in stderr, stderr
    # ours ("error: ..."), argparse's ("pixtral serve: error: ...") or a logged ERROR (not uvicorn.error's INFO)
    errors = [
        line for line in stderr.splitlines() if re.match(r"^([\w ]+: )?error: ", line) or " ERROR " in line
    ]
    assert len(errors) == 1 and needle in errors[0], stderr


def test_a_port_in_use_exits_with_one_error_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = serve_process("--port", str(port))
    assert_one_clear_error(result, f"cannot listen on 127.0.0.1:{port}")


def test_a_port_out_of_range_exits_with_one_error_line():
    assert_one_clear_error(serve_process("--port", "99999"), "--port: expected a port number 0..65535")


def test_an_unknown_device_stops_the_server_with_one_clear_error():
    result = serve_process("--port", str(free_port()), "--device", "no-such-device")
    assert_one_clear_error(result, "cannot load the model: device 'no-such-device' is not one of")


BROKEN_LOAD = """
import sys
import pixtral.engine

def broken_load(**kwargs):  # not one of the errors a load is expected to raise
    raise RuntimeError("CUDA error: an illegal memory access was encountered")

pixtral.engine.Engine.load = staticmethod(broken_load)
from pixtral.serve.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_load_failing_with_an_unexpected_error_stops_the_server(tmp_path):
    script = tmp_path / "broken_load.py"
    script.write_text(BROKEN_LOAD)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + str(REPO / "src")}
    result = subprocess.run(
        [sys.executable, str(script), "--port", str(free_port())],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_clear_error(result, "cannot load the model: RuntimeError: CUDA error")


SLOW_LOAD = """
import sys, torch
import pixtral.engine

def slow_load(**kwargs):  # a load that stays inside torch ops for minutes
    a = torch.randn(600, 600)
    for _ in range(1_000_000):
        a = torch.tanh(a @ a)

pixtral.engine.Engine.load = staticmethod(slow_load)
from pixtral.serve.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_signal_while_the_model_loads_exits_without_an_abort(tmp_path, sig, status):
    script = tmp_path / "slow_load.py"
    script.write_text(SLOW_LOAD)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", str(free_port())],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stderr:
            if "Application startup complete" in line:
                break
        time.sleep(0.5)  # the loading thread is inside a torch op now
        proc.send_signal(sig)
        stderr = proc.stderr.read()
        assert proc.wait(timeout=60) == status, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "terminate called" not in stderr and "Traceback" not in stderr, stderr
    assert "stopped while the model was loading" in stderr
