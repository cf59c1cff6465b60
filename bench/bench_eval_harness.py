"""End-to-end harness overhead: items/s through the whole pipeline against a fake OpenAI server on loopback.

    .venv/bin/python bench/bench_eval_harness.py [--rows 1000] [--concurrency 16]

The fake server (tests/evals/fake_server.py) answers instantly, so this measures the harness itself: building
requests (base64 of the original image bytes), HTTP, the durable store (one fsync per group commit), scoring and
reports. A resumed run (everything cached) is timed too. Run from the repository root.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixtral.evals import EvalConfig, run_eval  # noqa: E402
from tests.evals.fake_server import FakeOpenAIServer  # noqa: E402
from tests.evals.fixtures import build_fixtures  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1000, help="rows per task (chartqa and vqav2)")
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fx = build_fixtures(Path(tmp) / "data", copies=max(1, args.rows // 4))
        server = FakeOpenAIServer(fx.oracle)
        url = server.start()
        cfg = EvalConfig(tasks=["chartqa", "vqav2"], output_dir=Path(tmp) / "run", endpoints=[url],
                         data_dir=fx.root, concurrency=args.concurrency, progress=False)  # fmt: skip
        try:
            start = time.perf_counter()
            results = run_eval(cfg)
            first = time.perf_counter() - start
            start = time.perf_counter()
            run_eval(cfg)
            resumed = time.perf_counter() - start
        finally:
            server.stop()
    n = sum(t["counts"]["items"] for t in results["tasks"].values())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{n:,} items, concurrency {args.concurrency}: {n / first:,.0f} items/s end to end ({first:.1f} s), "
          f"resume with everything cached {resumed:.1f} s, peak RSS {rss:.0f} MiB (server included)")  # fmt: skip


if __name__ == "__main__":
    main()
