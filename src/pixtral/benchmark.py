"""Engine speed beside transformers on the same weights, in the same run, with the machine's limits.

    pixtral bench                                   # 'small' preset (~1.1 B params), float32
    pixtral bench --preset tiny                     # seconds; for checking the script
    pixtral bench --dtype bfloat16 --json out.json  # (bench/bench_engine.py runs the same)
    pixtral bench --device cuda                     # on a GPU (bfloat16 by default there)

Prints (ours | transformers | ratio | limit):
- vision encoder images/s at 256², 512² and a mixed batch of 8 images (PixtralVisionModel as the peer);
- time to first token with one 512² image, split into preprocessing / vision encoder / prefill, and the
  prefill's achieved FLOP/s beside the measured matmul FLOP/s;
- decode tokens/s at batch 1 (transformers `generate` as the peer) and the effective bandwidth (decoder
  weight bytes read per token × tokens/s) beside the measured memory read bandwidth;
- aggregate decode tokens/s with 8 and 32 concurrent requests (continuous batching);
- peak RSS.
- int8 and int4 (group 32) decode at batch 1 beside llama.cpp's Q8_0 and Q4_0 on the same weights (our GGUF
  export, llama-cpp-python), with the bandwidth each reaches for its bytes (the peer cell is empty and the
  note says why when llama-cpp-python is not installed);
- the CPU kernels chosen for the linear layers (engine/cpu_kernels.py; --kernel or PIXTRAL_KERNEL to force).
The machine is shared and noisy: compare ratios from one run, not absolute times across runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pixtral.argtypes import add_tensor_parallel_option, int_at_least
from pixtral.checkpoint.loader import convert, load_model
from pixtral.checkpoint.random_init import create_random_checkpoint
from pixtral.config import preset
from pixtral.engine import Engine, SamplingParams
from pixtral.engine.compute_thread import in_fresh_thread
from pixtral.engine.cpu_kernels import KERNELS, cpu_model_name
from pixtral.engine.device import default_dtype, resolve_device
from pixtral.engine.engine import prepare_for_inference_
from pixtral.engine.scheduler import Finished, SchedulerConfig
from pixtral.prompt.tokenizer import load_tokenizer
from pixtral.scheduler_options import add_scheduler_options, scheduler_config


def synchronize() -> None:
    """Wait for queued GPU work, so that a wall-clock time covers it (a no-op without CUDA)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        synchronize()
        t = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - t)
    return min(times)


def best_of_interleaved(fns: dict[str, Callable[[], object]], rounds: int = 3) -> dict[str, float]:
    """The best time of each function over `rounds` rounds that run them in turn: ours and a peer's, timed
    minutes apart, would each meet a different machine (this one's speed drifts by 20% within minutes).
    In each round a function runs twice and its second run is timed: right after the other side's run
    (another model's freed activations) the first pays for fresh memory pages, which a server's
    consecutive requests do not."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            times[name].append(best_of(fn, 1))
    return {name: min(ts) for name, ts in times.items()}


def read_bandwidth_gbs(device: torch.device | str | None = None, gib: float = 1.0, repeat: int = 5) -> float:
    """How fast this machine's threads stream `gib` GiB of float32 from memory, in GB/s: the faster of two
    kernels that read every byte once, a sum and a float32 matrix-vector product (MKL's sgemv on the CPU, the
    kernel of float32 decode). The sum alone reads ~25-30% slower here than the product, which had decode at
    "116% of the limit"; a limit must be what the best reader reaches. Best of `repeat` runs each."""
    device = torch.device(device) if device is not None else torch.get_default_device()
    x = torch.ones(int(gib * 1024**3) // 4, device=device)  # (n,) float32
    rows = x.view(-1, 4096)  # (n / 4096, 4096), the same bytes
    v = torch.ones(4096, device=device)
    seconds = min(best_of(lambda: x.sum(), repeat), best_of(lambda: rows @ v, repeat))
    return x.numel() * 4 / seconds / 1e9


def machine_limits(
    device: torch.device | str | None = None, read_gib: float = 1.0, dtype: torch.dtype = torch.float32
) -> dict[str, float]:
    """Read bandwidth (`read_bandwidth_gbs` over read_gib GiB) and 2048² matmul FLOP/s in float32 and, when
    `dtype` is another, in that dtype too ("matmul_gflops_dtype"; bfloat16 on AMX is several times float32)."""
    device = torch.device(device) if device is not None else torch.get_default_device()
    out = {"read_bandwidth_gbs": read_bandwidth_gbs(device, read_gib)}
    for key, dt in (("matmul_gflops", torch.float32), ("matmul_gflops_dtype", dtype)):
        a, b = (
            torch.randn(2048, 2048, device=device, dtype=dt),
            torch.randn(2048, 2048, device=device, dtype=dt),
        )
        out[key] = 2 * 2048**3 / best_of(lambda a=a, b=b: a @ b) / 1e9
    return out


def image_pixels(side_w: int, side_h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3, side_h, side_w)).astype(np.float32)


def hf_vision_inputs(images: list[np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    hmax = max(i.shape[1] for i in images)
    wmax = max(i.shape[2] for i in images)
    pv = torch.zeros(len(images), 3, hmax, wmax, device=device)
    for k, im in enumerate(images):
        pv[k, :, : im.shape[1], : im.shape[2]] = torch.from_numpy(im).to(device)
    sizes = torch.tensor([list(i.shape[1:]) for i in images], device=device)
    return {"pixel_values": pv, "image_sizes": sizes}


def bench_vision(model, hf, dtype) -> list[dict]:
    sets = {
        "256²": [image_pixels(256, 256, 0)],
        "512²": [image_pixels(512, 512, 1)],
        "mixed ×8": [
            image_pixels(w, h, s)
            for s, (w, h) in enumerate(
                [
                    (512, 512),
                    (256, 256),
                    (1024, 128),
                    (128, 768),
                    (384, 256),
                    (512, 320),
                    (64, 64),
                    (256, 512),
                ]
            )
        ],
    }
    rows = []
    for name, images in sets.items():
        tensors = [torch.from_numpy(i).to(model.device, dtype) for i in images]
        with torch.inference_mode():
            encoders = {"ours": lambda t=tensors: model.vision_encoder(t)}
            if hf is not None:
                inputs = hf_vision_inputs(images, model.device)
                inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
                encoders["peer"] = lambda i=inputs: hf.model.vision_tower(**i)
            best = best_of_interleaved(encoders, rounds=2)
            ours, peer = best["ours"], best.get("peer")
            if hf is not None:
                a = model.vision_encoder(tensors).float()
                b = hf.model.vision_tower(**inputs).last_hidden_state[0].float()
                assert (a - b).abs().max() < (1e-3 if dtype == torch.float32 else 1e-1), (
                    "vision outputs differ"
                )
        rows.append(
            {
                "what": f"vision encoder, {name} (images/s)",
                "ours": len(images) / ours,
                "peer": None if peer is None else len(images) / peer,
            }
        )
    return rows


def bench_ttft(engine: Engine, hf, limits) -> list[dict]:
    img = Image.fromarray((np.random.default_rng(0).random((512, 512, 3)) * 255).astype(np.uint8))
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": img},
                {"type": "text", "text": "Describe this image in detail."},
            ],
        }
    ]
    model = engine.model
    t0 = time.perf_counter()
    prompt = engine.encode(messages)
    t_pre = time.perf_counter() - t0
    ids = torch.tensor([prompt.token_ids], device=model.device)
    pix = [torch.from_numpy(i).to(model.device, model.dtype) for i in prompt.images]
    with torch.inference_mode():
        feats = model.encode_images(pix)
        steps = {
            "vision": lambda: model.encode_images(pix),
            "prefill": lambda: model(ids, image_features=feats, last_only=True),
        }
        if hf is not None:
            inputs = hf_vision_inputs(prompt.images, model.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
            steps["peer"] = lambda: hf(input_ids=ids, **inputs, logits_to_keep=1)
        best = best_of_interleaved(steps, rounds=2)
        t_vis, t_fill, peer = best["vision"], best["prefill"], best.get("peer")
    t = model.config.text
    n = ids.shape[1]
    flops = (
        2 * n * (model.config.num_parameters()["decoder"] - 2 * t.vocab_size * t.dim)
        + 2 * t.dim * t.vocab_size
    )
    return [
        {
            "what": f"time to first token, {n}-token prompt with one 512² image (ms)",
            "ours": 1e3 * (t_pre + t_vis + t_fill),
            "peer": None if peer is None else 1e3 * (t_pre + peer),
            "note": f"preprocessing {1e3 * t_pre:.0f} ms, vision {1e3 * t_vis:.0f} ms, prefill {1e3 * t_fill:.0f} ms",
        },
        {
            "what": f"prefill achieved GFLOP/s (decoder only; limit: {model.dtype} 2048² matmul)",
            "ours": flops / t_fill / 1e9,
            "limit": limits.get("matmul_gflops_dtype", limits["matmul_gflops"]),
        },
    ]


def decode_rate(engine: Engine, n_requests: int, n_tokens: int) -> tuple[float, float]:
    """Aggregate decode tokens/s over n concurrent requests, and the first request's time to first token."""
    tok = engine.tokenizer
    prompts = [
        [1, 3, *tok.instruct_tokenizer.tokenizer.encode(f"Tell story number {i}.", False, False), 4]
        for i in range(n_requests)
    ]
    params = SamplingParams(max_tokens=n_tokens, temperature=0.0)
    stamps: list[list[float]] = [[] for _ in prompts]
    start = time.perf_counter()
    requests = [engine.scheduler.submit(p, [], params, frozenset()) for p in prompts]

    def drain(i):
        while not isinstance(requests[i].events.get(), Finished):
            stamps[i].append(time.perf_counter())

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(n_requests)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    first = max(s[0] for s in stamps)  # every request has started decoding
    end = max(s[-1] for s in stamps)
    decoded = sum(sum(1 for t in s if t > first) for s in stamps)
    return decoded / (end - first), stamps[0][0] - start


def _transformers_decode_rate(hf, device: torch.device, n_tokens: int) -> float:
    """transformers' batch-1 decode tokens/s: `generate` of n + 1 tokens less `generate` of 1 (the prefill)."""
    ids = torch.tensor([[1, 3, 22177, 1044, 4]], device=device)
    gen = dict(do_sample=False, pad_token_id=0, eos_token_id=None, attention_mask=torch.ones_like(ids))
    with torch.inference_mode():
        t1 = best_of(lambda: hf.generate(input_ids=ids, max_new_tokens=1, min_new_tokens=1, **gen), 2)
        tn = best_of(
            lambda: hf.generate(
                input_ids=ids, max_new_tokens=n_tokens + 1, min_new_tokens=n_tokens + 1, **gen
            ),
            1,
        )
    return n_tokens / (tn - t1)


def bench_decode(engine: Engine, hf, limits, n_tokens: int) -> list[dict]:
    # the peer first, while the engine's thread has no OpenMP team yet: each measured as the only team
    peer = None if hf is None else in_fresh_thread(_transformers_decode_rate, hf, engine.device, n_tokens)
    decode_rate(engine, 1, 4)  # warm-up, as transformers' rate is measured after two warm generates
    rate1, _ = decode_rate(engine, 1, n_tokens)
    cfg = engine.model.config
    esize = engine.model.dtype.itemsize
    weight_bytes = (
        cfg.num_parameters()["decoder"] - cfg.text.vocab_size * cfg.text.dim
    ) * esize  # embeddings: 1 row
    rows = [
        {"what": "decode tokens/s, batch 1", "ours": rate1, "peer": peer},
        {
            "what": "decode effective bandwidth GB/s (weights read per token × tok/s)",
            "ours": weight_bytes * rate1 / 1e9,
            "limit": limits["read_bandwidth_gbs"],
        },
    ]
    for n in (8, 32):
        agg, _ = decode_rate(engine, n, n_tokens)
        rows.append(
            {
                "what": f"aggregate decode tokens/s, {n} concurrent requests",
                "ours": agg,
                "note": f"{agg / rate1:.1f}× batch 1",
            }
        )
    return rows


LLAMA_CPP_PEERS = (("int8", 128, "q8_0"), ("int4", 32, "q4_0"))  # ours (mode, group) beside llama.cpp's type


def _llama_cpp_files(llama_cpp, native: Path, tmp: Path) -> None:
    """model-q8_0.gguf (our exporter) and model-q4_0.gguf (llama.cpp's quantizer, from our f16 export)."""
    from pixtral.checkpoint.gguf_export import export_gguf

    export_gguf(native, tmp / "model-q8_0.gguf", "q8_0", mmproj=False)
    export_gguf(native, tmp / "model-f16.gguf", "f16", mmproj=False)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.nthread = torch.get_num_threads()
    llama_cpp.llama_model_quantize(
        str(tmp / "model-f16.gguf").encode(), str(tmp / "model-q4_0.gguf").encode(), params
    )
    (tmp / "model-f16.gguf").unlink()


def _load_quantized_prepared(native: Path, mode: str, group: int, kernel: str | None):
    from pixtral.engine.quantize import load_quantized

    model, _, _ = load_quantized(native, mode, dtype="float32", group_size=group)
    return model, prepare_for_inference_(model, kernel)


def _transformers_peer(native: Path, tmp: Path, dtype: torch.dtype, device: torch.device):
    import transformers

    convert(native, tmp / "hf", "hf")
    return (
        transformers.LlavaForConditionalGeneration.from_pretrained(tmp / "hf", dtype=dtype).eval().to(device)
    )


def bench_quantized_vs_llama_cpp(
    native: Path, tmp: Path, n_tokens: int, limits: dict, kernel: str | None = None, rounds: int = 3
) -> list[dict]:
    """Batch-1 decode of our int8 and int4 (group 32) engines beside llama.cpp's Q8_0 and Q4_0 on the same
    weights (llama-cpp-python; Q8_0 is our exporter's GGUF, Q4_0 that GGUF's f16 twin quantized by llama.cpp's
    own `llama_model_quantize`). Ours and the peer alternate for `rounds` rounds; each figure is the median.
    Rows say why when llama-cpp-python is missing."""
    from pixtral.engine.quantize import decoder_bytes_per_token

    try:
        import llama_cpp
    except ImportError:
        llama_cpp = None
    if llama_cpp is not None:
        in_fresh_thread(_llama_cpp_files, llama_cpp, native, tmp)
    rows = []
    for mode, group, peer_type in LLAMA_CPP_PEERS:
        label = f"{mode}{'' if mode == 'int8' else f' g{group}'}"
        what = f"decode tokens/s, batch 1, {label} (peer: llama.cpp {peer_type.upper()}, same weights)"
        model, choice = in_fresh_thread(_load_quantized_prepared, native, mode, group, kernel)
        per_token = decoder_bytes_per_token(model)
        engine = Engine(model, load_tokenizer(None), scheduler=SchedulerConfig(max_num_seqs=1))
        ours, peer, how = [], [], ""
        for _ in range(rounds):
            ours.append(decode_rate(engine, 1, n_tokens)[0])
            if llama_cpp is not None:
                rate, how = _llama_cpp_decode_rate(tmp / f"model-{peer_type}.gguf", n_tokens)
                peer.append(rate)
        engine.close()
        del engine, model
        note = f"kernel {choice.by_kind.get(mode)}; {per_token / 1e9:.3f} GB read per token"
        if llama_cpp is None:
            note += (
                "; peer skipped: llama-cpp-python is not installed (pip install llama-cpp-python builds it)"
            )
        else:
            note += f"; llama-cpp-python {llama_cpp.__version__} ({how}), in a child process, alternating with ours"
        rate = float(np.median(ours))
        rows.append(
            {"what": what, "ours": rate, "peer": float(np.median(peer)) if peer else None, "note": note}
        )
        rows.append(
            {
                "what": f"{label} decode effective bandwidth GB/s (quantized bytes read per token × tok/s)",
                "ours": per_token * rate / 1e9,
                "limit": limits["read_bandwidth_gbs"],
            }
        )
    return rows


_LLAMA_CPP_DECODE = r"""
import sys, time
import llama_cpp
import llama_cpp.llama
path, n_tokens, threads, extra = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
default_params = llama_cpp.llama_model_default_params
def model_params():
    p = default_params()
    p.use_extra_bufts = extra  # llama.cpp's repacked (AMX / AVX-512) weight buffers
    return p
llama_cpp.llama.llama_cpp.llama_model_default_params = model_params
llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_threads=threads, verbose=False)
prompt = [1, 3, 22177, 1044, 4]
def timed(n):
    llm.reset()
    llm.eval(prompt)
    t = time.perf_counter()
    for _ in range(n):
        llm.eval([22177])  # the token fed does not change the work per step
    return time.perf_counter() - t
timed(2)  # warm-up
print(n_tokens / timed(n_tokens))
llm.close()
"""


def _llama_cpp_decode_rate(gguf: Path, n_tokens: int) -> tuple[float, str]:
    """llama.cpp's batch-1 decode tokens/s, in a child process (llama.cpp's crashes, below, stay there), and
    how it ran: with llama.cpp's repacked weight buffers (its AMX / AVX-512 paths) when they work, else
    without them (llama-cpp-python 0.3.36 built here with GGML_NATIVE segfaults in llama_decode with them
    on some shapes: the 'tiny' preset's Q8_0)."""
    import subprocess
    import sys

    for extra in ("1", "0"):
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                _LLAMA_CPP_DECODE,
                str(gguf),
                str(n_tokens),
                str(torch.get_num_threads()),
                extra,
            ],
            capture_output=True,
            text=True,
        )
        if out.returncode == 0:
            how = "repacked weights" if extra == "1" else "plain weights (repacked buffers crashed)"
            return float(out.stdout.strip().splitlines()[-1]), how
    raise RuntimeError(f"llama.cpp failed on {gguf}: {out.stderr[-2000:]}")


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    ap = subparsers.add_parser(
        "bench",
        help="measure speed beside transformers and the machine's limits",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(ap)
    ap.set_defaults(handler=run)
    return ap


def _add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--preset", choices=["tiny", "small"], default="small")
    ap.add_argument(
        "--dtype", choices=["float32", "bfloat16"], help="default: float32 on the CPU, bfloat16 on CUDA"
    )
    ap.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    ap.add_argument(
        "--tokens",
        type=int_at_least(2),
        default=32,
        help="decoded tokens per measurement, at least 2 (default 32)",
    )
    ap.add_argument(
        "--kernel",
        choices=KERNELS,
        default=None,
        help="CPU kernels of the linear layers (engine/cpu_kernels.py; default: $PIXTRAL_KERNEL, else auto)",
    )
    ap.add_argument("--no-peer", action="store_true", help="skip transformers and llama.cpp")
    add_tensor_parallel_option(ap)
    add_scheduler_options(ap, kv_gib=8)
    ap.add_argument(
        "--quantized-only",
        action="store_true",
        help="only the int8 / int4 decode rows beside llama.cpp (CPU; skips the float model's rows)",
    )
    ap.add_argument("--json", type=Path, help="also write the results here")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(ap)
    run(ap.parse_args())


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(torch.get_num_threads())
    device = resolve_device(args.device)
    args.dtype = args.dtype or default_dtype(device)
    dtype = getattr(torch, args.dtype)
    # every heavy step outside the engine's own thread runs in a thread that ends with it (compute_thread.py)
    limits = in_fresh_thread(machine_limits, device, dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:
        native = Path(tmp) / "native"
        in_fresh_thread(create_random_checkpoint, native, preset(args.preset), dtype=dtype)
        kernels, rows = None, []
        if args.tensor_parallel_size > 1 and not args.quantized_only:
            engine = Engine.load(
                native,
                dtype=args.dtype,
                device=str(device),
                scheduler=scheduler_config(args),
                tensor_parallel_size=args.tensor_parallel_size,
            )
            rows = _engine_rows(args, engine, None, native, Path(tmp), device, dtype, limits)
        elif not args.quantized_only:
            model, _ = in_fresh_thread(load_model, native, dtype=dtype, device=device)
            kernels = in_fresh_thread(prepare_for_inference_, model, args.kernel)
            kernels = kernels if device.type == "cpu" else None
            engine = Engine(
                model, load_tokenizer(None), model_name=args.preset, scheduler=scheduler_config(args)
            )
            rows = _engine_rows(args, engine, model, native, Path(tmp), device, dtype, limits)
            del model
        if (args.quantized_only or not args.no_peer) and device.type == "cpu":  # llama.cpp: a CPU build
            rows += bench_quantized_vs_llama_cpp(native, Path(tmp), args.tokens, limits, args.kernel)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(
        f"\n{args.preset} preset ({preset(args.preset).num_parameters()['total'] / 1e9:.2f} B params), {args.dtype}, "
        f"on {device}, "
        f"{torch.get_num_threads()} threads; measured read bandwidth {limits['read_bandwidth_gbs']:.1f} GB/s, "
        f"fp32 matmul {limits['matmul_gflops']:.0f} GFLOP/s, {args.dtype} matmul "
        f"{limits['matmul_gflops_dtype']:.0f} GFLOP/s; peak RSS {peak_gb:.1f} GB (both models)"
    )
    if kernels is not None:
        print(f"{cpu_model_name()}; {kernels}")
    print()
    print("| measurement | pixtral | peer (transformers; llama.cpp where named) | speed-up | limit | note |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        peer, limit = r.get("peer"), r.get("limit")
        # ratio > 1 means pixtral is faster (for times, peer / ours; for rates, ours / peer)
        ratio = "" if not peer else f"{(peer / r['ours'] if '(ms)' in r['what'] else r['ours'] / peer):.2f}×"
        print(
            f"| {r['what']} | {_number(r['ours'])} | {'' if peer is None else f'{peer:.2f}'} | {ratio} | "
            f"{'' if limit is None else f'{limit:.1f}'} | {r.get('note', '')} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "preset": args.preset,
                    "dtype": args.dtype,
                    "device": str(device),
                    "limits": limits,
                    "peak_rss_gb": peak_gb,
                    "kernels": None if kernels is None else str(kernels),
                    "rows": rows,
                },
                indent=2,
            )
        )


def _engine_rows(args, engine: Engine, model, native: Path, tmp: Path, device, dtype, limits) -> list[dict]:
    """Vision (when `model`, the one-process model, is given), TTFT/prefill and decode rows of `engine`, beside
    transformers unless --no-peer; the engine is closed."""
    hf = None if args.no_peer else in_fresh_thread(_transformers_peer, native, tmp, dtype, device)
    rows = in_fresh_thread(
        lambda: (bench_vision(model, hf, dtype) if model is not None else []) + bench_ttft(engine, hf, limits)
    ) + bench_decode(engine, hf, limits, args.tokens)
    engine.close()
    if args.tensor_parallel_size > 1:  # rank 0's config holds its shard's dims: no FLOP or byte counts
        rows = [r for r in rows if not r["what"].startswith(("prefill achieved", "decode effective"))]
        for row in rows:
            row["note"] = "; ".join(
                filter(None, [row.get("note"), f"tensor parallel over {args.tensor_parallel_size} ranks"])
            )
    return rows


def _number(x: float) -> str:
    return "–" if x != x else f"{x:.2f}"  # NaN: not measured


if __name__ == "__main__":
    main()
