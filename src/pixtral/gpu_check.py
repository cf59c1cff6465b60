"""The GPU check in one command: correctness and speed of the engine on a device, written as JSON.

    scripts/gpu_check.sh                                   # CUDA, the 12B shape, bfloat16, random weights
    python -m pixtral.gpu_check --device cpu --preset tiny --requests 4 --tokens 4   # what the tests run

1. parity with transformers on the device, float32: logits of a prompt with an image (max abs diff) and 8
   greedy tokens of our reference loop against transformers' `generate`, on the 12B layer shapes with two
   layers (`--parity-preset`; the whole 12B in float32 would be 100 GB on disk and on the device);
2. time to first token of one request with one `--image-side`² image (preprocessing, vision, prefill);
3. aggregate decode tokens/s at batch 1 and 32, beside the bandwidth ceiling: decoder bytes read per
   token / the device's read bandwidth (measured, and the vendor's figure when the device is one we know:
   the 12B shape reads 23.15 GB per token, so an H100's 3.35 TB/s allows 145 tok/s at batch 1);
4. `--requests` concurrent image requests through the engine (encoding included): requests/s and tokens/s.
The speed model has the preset's shapes, random weights, the device's default dtype (bfloat16 on CUDA),
and is built on the device directly (no checkpoint on disk). A shared machine gives indicative figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pixtral.benchmark import decode_rate, machine_limits, synchronize
from pixtral.config import PixtralConfig, preset, with_text
from pixtral.engine import Engine, SamplingParams
from pixtral.engine.device import default_dtype, resolve_device
from pixtral.engine.engine import prepare_for_inference_
from pixtral.engine.quantize import decoder_bytes_per_token
from pixtral.engine.scheduler import SchedulerConfig
from pixtral.model.norm import RMSNorm
from pixtral.model.pixtral import Pixtral
from pixtral.prompt.tokenizer import load_tokenizer
from pixtral.scheduler_options import kv_memory, with_kv_memory

# Vendors' memory bandwidth (bytes/s), for the ceiling beside the measured one.
NOMINAL_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12, "L40S": 0.864e12}
PARITY_TOLERANCE = {"cpu": 1e-4, "cuda": 2e-3}  # fp32 max abs logit diff (CUDA kernels sum in other orders)


def parity_config(name: str) -> PixtralConfig:
    """A preset's widths with a 1200-token vocabulary (the vocabulary only sizes the embedding and the head,
    which parity needs no more of); '12b-2layers': the 12B widths with 2 decoder and 2 vision layers."""
    if name == "12b-2layers":
        base = preset("12b")
        base = replace(base, vision=replace(base.vision, num_hidden_layers=2))
        return with_text(base, n_layers=2, vocab_size=1200)
    return with_text(preset(name), vocab_size=1200)


def _hf_inputs(images: list[torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    hmax, wmax = max(im.shape[1] for im in images), max(im.shape[2] for im in images)
    pixel_values = torch.zeros(len(images), 3, hmax, wmax, device=device)
    for i, im in enumerate(images):
        pixel_values[i, :, : im.shape[1], : im.shape[2]] = im
    sizes = torch.tensor([list(im.shape[1:]) for im in images], device=device)
    return {"pixel_values": pixel_values, "image_sizes": sizes}


@torch.inference_mode()
def check_parity(device: torch.device, config: PixtralConfig, new_tokens: int = 8) -> dict[str, Any]:
    """Our model and transformers' on the same random weights (written by our HF writer), float32."""
    try:
        import transformers
    except ImportError:
        return {"skipped": "transformers is not installed"}
    from pixtral.checkpoint.loader import load_model, save_model
    from pixtral.engine.generate import greedy_generate_ids
    from pixtral.model.init import init_random_weights_

    gen = torch.Generator().manual_seed(0)
    v = config.vision
    rows, cols = 3, 4  # one 48 x 64 image
    image = torch.randn(3, rows * v.patch_size, cols * v.patch_size, generator=gen)
    block = ([v.image_token_id] * cols + [v.image_break_token_id]) * (rows - 1)
    block += [v.image_token_id] * cols + [v.image_end_token_id]
    text = torch.randint(1000, config.text.vocab_size, (8,), generator=gen).tolist()
    ids = [config.bos_id, 3, *text[:4], *block, *text[4:], 4]
    with tempfile.TemporaryDirectory() as tmp:
        model = init_random_weights_(Pixtral(config), seed=1, std=0.05, norm_jitter=0.2)
        save_model(model, tmp, "hf")
        del model
        ours, _ = load_model(tmp, dtype="float32", device=device)
        hf = transformers.LlavaForConditionalGeneration.from_pretrained(tmp, dtype=torch.float32).to(device)
    hf.eval()
    ids_t = torch.tensor([ids], device=device)
    inputs = _hf_inputs([image.to(device)], device)
    a = ours(ids_t, [image.to(device)])
    b = hf(input_ids=ids_t, **inputs).logits
    diff = float((a.float() - b.float()).abs().max())
    expected = hf.generate(
        input_ids=ids_t,
        **inputs,
        max_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        attention_mask=torch.ones_like(ids_t),
    )[0, len(ids) :].tolist()
    got = greedy_generate_ids(ours, ids, [image], max_tokens=new_tokens)
    tol = PARITY_TOLERANCE.get(device.type, 2e-3)
    return {
        "max_abs_logit_diff": diff,
        "max_abs_logit": float(a.abs().max()),
        "tolerance": tol,
        "greedy_tokens_identical": got == expected,
        "ok": diff <= tol and got == expected,
    }


@torch.no_grad()
def random_model_on(
    device: torch.device, config: PixtralConfig, dtype: torch.dtype, seed: int = 0
) -> Pixtral:
    """The preset's shapes with N(0, 0.02) weights made on the device in `dtype` (never in float32 first)."""
    with torch.device("meta"):
        model = Pixtral(config)
    model = model.to(dtype).to_empty(device=device)
    torch.manual_seed(seed)
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, RMSNorm):
                p.fill_(1.0)
            elif name == "bias":
                p.zero_()
            else:
                p.normal_(0.0, 0.02)
    return model.eval()


def _image_message(side: int, seed: int) -> list[dict]:
    pixels = (np.random.default_rng(seed).random((side, side, 3)) * 255).astype(np.uint8)
    return [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": Image.fromarray(pixels)},
                {"type": "text", "text": "Describe this image."},
            ],
        }
    ]


def time_to_first_token(engine: Engine, side: int, repeat: int = 2) -> dict[str, float]:
    """Wall time from the messages to the first token; a new image each time (no image or prefix cache)."""
    times, n_prompt = [], 0
    for i in range(repeat + 1):  # the first run warms kernels up and is not counted
        synchronize()
        t0 = time.perf_counter()
        with contextlib.closing(
            engine.stream(_image_message(side, 100 + i), SamplingParams(max_tokens=1))
        ) as s:
            event = next(s)
        synchronize()
        if i:
            times.append(time.perf_counter() - t0)
        n_prompt = event.prompt_tokens
    return {"ttft_ms": 1e3 * min(times), "prompt_tokens": n_prompt, "image_side": side}


def concurrent_image_requests(engine: Engine, n: int, side: int, tokens: int) -> dict[str, float]:
    """n requests with an image each, from n threads at once, through engine.generate."""
    results: list[Any] = [None] * n
    messages = [_image_message(side, seed=1000 + i) for i in range(n)]

    def run(i: int) -> None:
        results[i] = engine.generate(messages[i], SamplingParams(max_tokens=tokens))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    generated = sum(len(r.token_ids) for r in results)
    return {
        "requests": n,
        "image_side": side,
        "max_tokens": tokens,
        "wall_s": wall,
        "requests_per_s": n / wall,
        "generated_tokens_per_s": generated / wall,
        "prompt_tokens_each": results[0].prompt_tokens,
    }


def check_tensor_parallel(
    device: torch.device, config: PixtralConfig, size: int, tokens: int = 8
) -> dict[str, Any]:
    """The model split over `size` ranks (parallel/, NCCL on CUDA) against one process, from a checkpoint
    written here: greedy tokens and the largest logit difference on a prompt with an image, and decode
    tokens/s of both."""
    from pixtral.checkpoint.loader import load_model, save_model
    from pixtral.model.kv_cache import SequenceKVCache
    from pixtral.model.pixtral import no_images
    from pixtral.parallel.launch import LoadSpec, start

    dtype = default_dtype(device)
    image = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(0))
    grid = 64 // config.vision.patch_size
    v = config.vision
    ids = [config.bos_id, 3] + ([v.image_token_id] * grid + [v.image_break_token_id]) * (grid - 1)
    ids = torch.tensor([ids + [v.image_token_id] * grid + [v.image_end_token_id] + list(range(1000, 1010))])

    def greedy(model) -> tuple[list[int], torch.Tensor, float]:
        cache = SequenceKVCache.for_model(model, ids.shape[1] + tokens)
        with torch.inference_mode():
            first = model(
                ids.to(model.device), [image.to(model.device, model.dtype)], caches=[cache], last_only=True
            )
            out, nxt = [], first[:, -1].argmax(-1, keepdim=True)
            t0 = time.perf_counter()
            for _ in range(tokens):
                out.append(int(nxt))
                nxt = model(nxt, image_mask=no_images(nxt), caches=[cache])[:, -1].argmax(-1, keepdim=True)
            return out, first.float().cpu(), tokens / (time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        save_model(random_model_on(torch.device("cpu"), config, torch.float32), tmp)
        one, _ = load_model(tmp, dtype=dtype, device=device)
        want, want_logits, one_rate = greedy(one)
        del one
        parallel, _ = start(LoadSpec(tmp, dtype, device.type), size, exit_on_rank_loss=False)
        try:
            got, got_logits, tp_rate = greedy(parallel)
        finally:
            parallel.close()
    return {
        "size": size,
        "greedy_identical": got == want,
        "max_abs_logit_diff": float((got_logits - want_logits).abs().max()),
        "decode_tok_s": {"1": one_rate, str(size): tp_rate},
    }


def run_gpu_check(
    device: str = "cuda",
    preset_name: str = "12b",
    parity_preset: str = "12b-2layers",
    batches: tuple[int, ...] = (1, 32),
    tokens: int = 32,
    requests: int = 64,
    image_side: int = 1024,
    request_image_side: int = 512,
    kv_cache_memory: tuple[float, bool] = (48.0, False),
    tensor_parallel: int | None = None,
) -> dict[str, Any]:
    """`kv_cache_memory`: (GiB, False) or (fraction of the free device memory, True), as `--kv-cache-memory`.
    `tensor_parallel`: ranks of the tensor-parallel check (None: 2 when two CUDA devices are present, else
    none; 0: none)."""
    where = resolve_device(device)
    dtype_name = default_dtype(where)
    report: dict[str, Any] = {
        "device": str(where),
        "device_name": torch.cuda.get_device_name(where) if where.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "preset": preset_name,
        "dtype": dtype_name,
    }
    report["parity"] = check_parity(where, parity_config(parity_preset))
    report["parity"]["preset"] = parity_preset
    if where.type == "cuda":
        torch.cuda.empty_cache()
    if tensor_parallel is None:
        tensor_parallel = 2 if where.type == "cuda" and torch.cuda.device_count() >= 2 else 0
    if tensor_parallel > 1:
        report["tensor_parallel"] = check_tensor_parallel(
            where, parity_config(parity_preset), tensor_parallel
        )
        if where.type == "cuda":
            torch.cuda.empty_cache()

    model = random_model_on(where, preset(preset_name), getattr(torch, dtype_name))
    report["kernels"] = str(prepare_for_inference_(model))  # as Engine.load: stacked projections, CPU kernels
    engine = Engine(
        model,
        load_tokenizer(None),
        model_name=f"{preset_name}-random",
        untrained=True,
        scheduler=with_kv_memory(SchedulerConfig(max_num_seqs=max(64, *batches)), kv_cache_memory),
    )
    try:
        report["time_to_first_token"] = time_to_first_token(engine, image_side)
        limits = machine_limits(where, read_gib=4.0 if where.type == "cuda" else 0.25)
        per_token = decoder_bytes_per_token(model)
        bandwidth = limits["read_bandwidth_gbs"] * 1e9
        nominal = next((bw for name, bw in NOMINAL_BANDWIDTH.items() if name in report["device_name"]), None)
        decode_rate(engine, 1, 4)  # warm-up
        rates = {b: decode_rate(engine, b, tokens)[0] for b in batches}
        report["decode"] = {
            "bytes_per_token_gb": per_token / 1e9,
            "measured_read_bandwidth_gbs": bandwidth / 1e9,
            "nominal_bandwidth_gbs": None if nominal is None else nominal / 1e9,
            "ceiling_tok_s_measured": bandwidth / per_token,
            "ceiling_tok_s_nominal": None if nominal is None else nominal / per_token,
            "tokens_per_s": {str(b): r for b, r in rates.items()},
            "batch1_fraction_of_ceiling": rates[batches[0]] / (nominal or bandwidth) * per_token,
            "speedup_over_batch1": {str(b): r / rates[batches[0]] for b, r in rates.items()},
        }
        report["concurrent_image_requests"] = concurrent_image_requests(
            engine, requests, request_image_side, tokens
        )
        if where.type == "cuda":
            report["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(where) / 1e9
    finally:
        engine.close()
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="auto, cpu, cuda or cuda:N (default cuda)")
    ap.add_argument("--preset", default="12b", choices=["tiny", "small", "12b"], help="speed model shape")
    ap.add_argument("--parity-preset", default="12b-2layers", choices=["tiny", "small", "12b-2layers"])
    ap.add_argument(
        "--batches", default="1,32", help="decode batch sizes, comma-separated (first = baseline)"
    )
    ap.add_argument("--tokens", type=int, default=32, help="tokens decoded per measurement")
    ap.add_argument("--requests", type=int, default=64, help="concurrent image requests")
    ap.add_argument("--image-side", type=int, default=1024, help="image side for time to first token")
    ap.add_argument(
        "--request-image-side", type=int, default=512, help="image side of the concurrent requests"
    )
    ap.add_argument(
        "--kv-cache-memory",
        type=kv_memory,
        default=(48.0, False),
        metavar="GIB|PCT%",
        help="KV pool of the speed engine in GiB, or a percentage of the free GPU memory (default 48)",
    )
    ap.add_argument(
        "--tensor-parallel",
        type=int,
        default=None,
        metavar="N",
        help="also check the model split over N ranks against one process (default: 2 with two GPUs; 0: off)",
    )
    ap.add_argument("--json", type=Path, default=Path("gpu_check.json"), help="where the results go")
    args = ap.parse_args(argv)
    report = run_gpu_check(
        device=args.device,
        preset_name=args.preset,
        parity_preset=args.parity_preset,
        batches=tuple(int(b) for b in args.batches.split(",")),
        tokens=args.tokens,
        requests=args.requests,
        image_side=args.image_side,
        request_image_side=args.request_image_side,
        kv_cache_memory=args.kv_cache_memory,
        tensor_parallel=args.tensor_parallel,
    )
    args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    parity = report["parity"]
    tp_ok = report.get("tensor_parallel", {}).get("greedy_identical", True)
    return 0 if parity.get("ok", True) and tp_ok else 1


if __name__ == "__main__":
    sys.exit(main())
