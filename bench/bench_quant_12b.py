"""The full Pixtral-12B shape on this machine: write a random bf16 checkpoint, load it with int8
quantize-while-loading, report peak RSS, decode a few tokens and report tok/s and effective GB/s.

    nice python bench/bench_quant_12b.py                       # ~25 GB on disk, deleted at the end
    nice python bench/bench_quant_12b.py --preset small        # a quick dry run of the same steps
    python bench/bench_quant_12b.py --dir /work/x --keep       # keep the checkpoint for later runs

Target (issue #4 item 5): peak RSS <= 15 GiB with --quantize int8, decode >= 70% of the bandwidth limit.
The load runs in a fresh process; its peak RSS is VmHWM from /proc. Every step prints one JSON line as soon
as it is measured (so a run cut short still leaves its figures in the log); --json writes them all.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

_LOAD_AND_DECODE = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[5]))
path, mode, n_tokens, prompt_len = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
kernel = sys.argv[6]
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
from pixtral.engine.quantize import decoder_bytes_per_token, load_quantized
from pixtral.model.kv_cache import SequenceKVCache
base = status("VmRSS")
t0 = time.perf_counter()
model, ckpt, summary = load_quantized(path, mode, dtype="bfloat16")
from pixtral.engine.engine import prepare_for_inference_
kernels = prepare_for_inference_(model, kernel)  # as Engine.load does: stacked projections, CPU kernels
load_s = time.perf_counter() - t0
peak_load = status("VmHWM")
params_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
per_token = decoder_bytes_per_token(model)
print(json.dumps({"step": "load", "mode": mode, "load_s": round(load_s, 1), "rss_before_load_gib": round(base / 2**30, 3),
                  "peak_rss_gib": round(peak_load / 2**30, 3), "rss_after_load_gib": round(status("VmRSS") / 2**30, 3),
                  "model_bytes_gb": round(params_bytes / 1e9, 3), "decoder_bytes_per_token_gb": round(per_token / 1e9, 3),
                  "quantized": str(summary), "kernels": str(kernels)}), flush=True)
cfg = model.config.text
cache = SequenceKVCache(cfg, prompt_len + n_tokens + 1, torch.bfloat16, model.device)
ids = torch.randint(1000, cfg.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    t0 = time.perf_counter()
    logits = model(ids, caches=[cache], last_only=True)[:, -1]
    prefill_s = time.perf_counter() - t0
    print(json.dumps({"step": "prefill", "tokens": prompt_len, "seconds": round(prefill_s, 2)}), flush=True)
    pos, times, tokens = prompt_len, [], []
    for i in range(n_tokens):
        tok = logits.argmax(-1)
        tokens.append(int(tok))
        t0 = time.perf_counter()
        logits = model(tok[:, None], caches=[cache])[:, -1]
        times.append(time.perf_counter() - t0)
        pos += 1
        print(json.dumps({"step": "decode", "token": i, "seconds": round(times[-1], 3),
                          "gb_per_s": round(per_token / times[-1] / 1e9, 2)}), flush=True)
times.sort()
med = times[len(times) // 2]
print(json.dumps({"step": "decode_summary", "tokens": n_tokens, "median_s": round(med, 3),
                  "tok_per_s": round(1 / med, 3), "effective_gb_per_s": round(per_token / med / 1e9, 2),
                  "peak_rss_gib": round(status("VmHWM") / 2**30, 3), "greedy_tokens": tokens}), flush=True)
"""


def main() -> None:
    import torch

    from pixtral.benchmark import read_bandwidth_gbs
    from pixtral.checkpoint.streaming_init import write_random_checkpoint_streaming
    from pixtral.config import preset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="12b", choices=["tiny", "small", "12b"])
    ap.add_argument("--dir", type=Path, default=Path("/work/pixtral-bench-12b"), help="checkpoint folder")
    ap.add_argument("--mode", default="int8", choices=["int8", "int4"])
    ap.add_argument("--tokens", type=int, default=8, help="tokens to decode")
    ap.add_argument("--prompt-len", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--kernel", default="auto", help="CPU kernels: auto, onednn or aten (engine/cpu_kernels.py)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint (default: delete it at the end)")
    ap.add_argument("--json", type=Path, help="also write all results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results: list[dict] = []

    def emit(d: dict) -> None:
        results.append(d)
        print(json.dumps(d), flush=True)

    config = preset(args.preset)
    n_params = config.num_parameters()["total"]
    need = n_params * 2
    emit(
        {
            "step": "machine",
            "read_gb_per_s": round(read_bandwidth_gbs(), 1),
            "preset": args.preset,
            "params": n_params,
        }
    )
    try:
        if not (args.dir / "consolidated.safetensors").is_file():
            free = shutil.disk_usage(args.dir.parent).free
            emit({"step": "disk", "free_gb": round(free / 1e9, 1), "need_gb": round(need / 1e9, 1)})
            if free < need + 5e9:
                raise SystemExit(f"not enough disk space under {args.dir.parent}")
            t0 = time.perf_counter()
            write_random_checkpoint_streaming(args.dir, config, torch.bfloat16, seed=0)
            dt = time.perf_counter() - t0
            emit(
                {
                    "step": "write",
                    "seconds": round(dt, 1),
                    "gb": round(need / 1e9, 2),
                    "gb_per_s": round(need / dt / 1e9, 2),
                }
            )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _LOAD_AND_DECODE,
                str(args.dir),
                args.mode,
                str(args.tokens),
                str(args.prompt_len),
                str(args.threads),
                args.kernel,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                d = json.loads(line)
                results.append(d)
                print(line, end="", flush=True)
        if proc.wait():
            emit({"step": "error", "returncode": proc.returncode})
    finally:
        if not args.keep and args.dir.exists():
            shutil.rmtree(args.dir)
            emit({"step": "cleanup", "deleted": str(args.dir)})
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
