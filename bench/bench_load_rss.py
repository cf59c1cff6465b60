"""Peak memory while loading a checkpoint, as a multiple of the loaded weights' size.

    python bench/bench_load_rss.py                      # a 0.25 B-parameter model, bf16 file -> fp32 and bf16
    python bench/bench_load_rss.py --preset small       # the 1.1 B 'small' preset (writes ~4.4 GB)

Each load runs in a fresh process: peak RSS is read from /proc (VmHWM, reset after imports), so the ratio
is (peak RSS during load - RSS before load) / bytes of the loaded parameters. Target: <= 1.3.
The peer figure printed beside ours is transformers' from_pretrained on the same weights (HF format copy).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_MEASURE = r"""
import json, sys, torch
torch.set_num_threads(2)
path, dtype, loader = sys.argv[1], sys.argv[2], sys.argv[3]
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
if loader == "pixtral":
    from pixtral.checkpoint.loader import load_model, open_checkpoint
    open_checkpoint(path)  # warm-up: lazy imports and the header check are one-time costs, not weights
else:
    import transformers
base = status("VmRSS")
try:
    open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark to the current RSS
except OSError:
    pass
if loader == "pixtral":
    model, _ = load_model(path, dtype=dtype)
else:
    model = transformers.LlavaForConditionalGeneration.from_pretrained(path, dtype=getattr(torch, dtype))
peak = status("VmHWM")
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"base": base, "peak": peak, "weights": weights, "ratio": (peak - base) / weights}))
"""


def measure(path: str | Path, dtype: str, loader: str = "pixtral") -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), dtype, loader], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mid_config():
    from pixtral.config import PixtralConfig, TextConfig, VisionConfig

    return PixtralConfig(
        text=TextConfig(
            dim=1024, n_layers=8, head_dim=128, hidden_dim=3584, n_heads=8, n_kv_heads=2, vocab_size=65536
        ),
        vision=VisionConfig(
            hidden_size=512, intermediate_size=2048, num_hidden_layers=4, num_attention_heads=8
        ),
    )


def main() -> None:
    import torch

    from pixtral.checkpoint.loader import convert
    from pixtral.checkpoint.random_init import create_random_checkpoint
    from pixtral.config import preset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["mid", "small"], default="mid")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    config = _mid_config() if args.preset == "mid" else preset("small")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        native = Path(tmp) / "native"
        create_random_checkpoint(native, config, dtype=torch.bfloat16)
        hf = Path(tmp) / "hf"
        convert(native, hf, "hf")
        file_gb = (native / "consolidated.safetensors").stat().st_size / 1e9
        for dtype in ("bfloat16", "float32"):
            ours = measure(native, dtype)
            peer = measure(hf, dtype, loader="transformers")
            rows.append(
                {
                    "file": "bf16",
                    "dtype": dtype,
                    "weights_gb": ours["weights"] / 1e9,
                    "pixtral_ratio": ours["ratio"],
                    "transformers_ratio": peer["ratio"],
                }
            )
    print(
        f"checkpoint: {args.preset} ({config.num_parameters()['total'] / 1e9:.2f} B params, {file_gb:.2f} GB bf16)"
    )
    print("| load as | weights GB | pixtral peak/weights | transformers peak/weights | target |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dtype']} | {r['weights_gb']:.2f} | {r['pixtral_ratio']:.3f} | {r['transformers_ratio']:.3f} | <= 1.3 |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
