"""Load test of `pixtral serve` on loopback: C concurrent streaming clients issue N requests in all.

Starts the real server (`python -m pixtral.serve`) on the tiny model (or --model), drives it with
httpx streaming clients (OpenAI SSE protocol, `stream_options.include_usage`), every --image-every'th
request carrying a small PNG as a data URL, and prints: errors, p50/p99 latency and time to first token,
request and token throughput, and the server's RSS after the first 100 and after the last 100 requests.

    .venv/bin/python bench/bench_serve_load.py                       # 64 clients x 1,000 requests, tiny model
    .venv/bin/python bench/bench_serve_load.py --requests 64000      # 64 clients x 1,000 requests each

Exit status 1 when any request failed or the RSS grew by 5 % or more between the first and the last 100.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_data_url(size: int = 64) -> str:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def tiny_model(out: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pixtral.cli", "init", "--out", str(out), "--preset", "tiny"],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def one_request(client: httpx.AsyncClient, i: int, args, image: str) -> dict:
    content: object = f"Request {i}: say something."
    if args.image_every and i % args.image_every == 0:
        content = [
            {"type": "image_url", "image_url": {"url": image}},
            {"type": "text", "text": "Describe it."},
        ]
    body = {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": args.max_tokens,
        "stream": True,
        "temperature": 0.7,
        "seed": i,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft = None
    usage = None
    done = False
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return {"ok": False, "error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    return {"ok": False, "error": chunk["error"]["message"]}
                if ttft is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    ttft = time.perf_counter() - t0
                if chunk.get("usage"):
                    usage = chunk["usage"]
    except httpx.HTTPError as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    if not done or usage is None:
        return {"ok": False, "error": "stream ended without usage and [DONE]"}
    return {
        "ok": True,
        "latency": time.perf_counter() - t0,
        "ttft": ttft,
        "tokens": usage["completion_tokens"],
    }


async def drive(base_url: str, pid: int, args) -> dict:
    image = png_data_url()
    results: list[dict] = []
    rss_marks: dict[str, int] = {"start": rss_bytes(pid)}
    next_id = 0
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:

        async def worker() -> None:
            nonlocal next_id
            while next_id < args.requests:
                i = next_id
                next_id += 1
                results.append(await one_request(client, i, args, image))
                n = len(results)
                if n == 100:
                    rss_marks["after_first_100"] = rss_bytes(pid)
                if n == args.requests - 100:
                    rss_marks["before_last_100"] = rss_bytes(pid)
                if args.progress and n % args.progress == 0:
                    print(f"  {n}/{args.requests} done", file=sys.stderr, flush=True)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.clients)))
        wall = time.perf_counter() - t0
        rss_marks["after_last_100"] = rss_bytes(pid)
        metrics = (await client.get("/metrics")).text
    ok = [r for r in results if r["ok"]]
    errors = [r["error"] for r in results if not r["ok"]]
    latencies = [r["latency"] for r in ok]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    tokens = sum(r["tokens"] for r in ok)
    first, last = rss_marks.get("after_first_100", rss_marks["start"]), rss_marks["after_last_100"]
    running = [
        ln
        for ln in metrics.splitlines()
        if ln.startswith(("pixtral_running_generations ", "pixtral_queued_requests "))
    ]
    return {
        "clients": args.clients,
        "requests": len(results),
        "errors": len(errors),
        "error_samples": errors[:5],
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(ok) / wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "latency_p50_s": round(percentile(latencies, 50), 4),
        "latency_p99_s": round(percentile(latencies, 99), 4),
        "latency_mean_s": round(statistics.fmean(latencies), 4) if latencies else None,
        "ttft_p50_s": round(percentile(ttfts, 50), 4),
        "ttft_p99_s": round(percentile(ttfts, 99), 4),
        "rss_start_mib": round(rss_marks["start"] / 2**20, 1),
        "rss_after_first_100_mib": round(first / 2**20, 1),
        "rss_after_last_100_mib": round(last / 2**20, 1),
        "rss_growth_pct": round(100 * (last - first) / first, 2),
        "server_after": running,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="model folder (default: a fresh tiny model)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--requests", type=int, default=1000, help="requests in all, spread over the clients")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--image-every", type=int, default=4, help="every k-th request carries an image (0: none)")
    p.add_argument("--max-concurrency", type=int, default=8)
    p.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="OMP_NUM_THREADS for the server (0: torch's default); 1 avoids stalls on a busy 2-core box",
    )
    p.add_argument("--progress", type=int, default=0, help="print progress every k requests")
    args = p.parse_args()
    if args.requests < 200:
        p.error("--requests must be at least 200 (the RSS check compares the first and last 100)")

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or tiny_model(Path(tmp) / "tiny")
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        if args.torch_threads:
            env["OMP_NUM_THREADS"] = str(args.torch_threads)
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pixtral.serve",
                "--model",
                str(model),
                "--port",
                str(port),
                "--no-access-log",
                "--log-level",
                "warning",
                "--max-concurrency",
                str(args.max_concurrency),
                "--max-queue",
                str(args.clients + 16),
            ],
            cwd=REPO,
            env=env,
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if httpx.get(base_url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not become healthy")
                time.sleep(0.2)
            report = asyncio.run(drive(base_url, server.pid, args))
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
    print(
        f"pixtral serve load test on loopback, model {args.model or 'tiny (pixtral init --preset tiny)'}, "
        f"max_tokens {args.max_tokens}, image every {args.image_every}"
    )
    for key, value in report.items():
        print(f"  {key:26s} {value}")
    print("JSON " + json.dumps(report))
    return 1 if report["errors"] or report["rss_growth_pct"] >= 5 else 0


if __name__ == "__main__":
    sys.exit(main())
