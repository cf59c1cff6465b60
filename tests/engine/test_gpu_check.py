"""The GPU check runs here on the CPU at the tiny preset, so it works the first time a GPU appears: the same
script and code path, only the device and the sizes differ."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytest.importorskip("transformers")


def test_gpu_check_script_runs_on_the_cpu_and_writes_its_json(tmp_path):
    out = tmp_path / "check.json"
    args = "--device cpu --preset tiny --parity-preset tiny --batches 1,4 --tokens 4 --requests 4"
    args += f" --image-side 256 --request-image-side 64 --kv-cache-memory 1 --tensor-parallel 2 --json {out}"
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), *args.split()],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["dtype"] == "float32"
    assert report["kernels"].startswith("CPU kernels: float32")  # prepared as Engine.load prepares a model
    parity = report["parity"]
    assert parity["ok"] and parity["greedy_tokens_identical"] and parity["max_abs_logit_diff"] <= 1e-4
    assert (
        report["time_to_first_token"]["ttft_ms"] > 0 and report["time_to_first_token"]["prompt_tokens"] > 256
    )
    decode = report["decode"]
    assert set(decode["tokens_per_s"]) == {"1", "4"} and all(v > 0 for v in decode["tokens_per_s"].values())
    assert decode["bytes_per_token_gb"] > 0 and decode["ceiling_tok_s_measured"] > 0
    concurrent = report["concurrent_image_requests"]
    assert concurrent["requests"] == 4 and concurrent["requests_per_s"] > 0
    tp = report["tensor_parallel"]  # two gloo ranks here; NCCL on two GPUs
    assert tp["size"] == 2 and tp["greedy_identical"] and tp["max_abs_logit_diff"] <= 1e-5


def test_the_12b_parity_shape_has_the_12b_widths():
    from pixtral.config import preset
    from pixtral.gpu_check import parity_config

    small, full = parity_config("12b-2layers"), preset("12b")
    assert (small.text.dim, small.text.n_heads, small.text.n_kv_heads, small.text.head_dim) == (
        full.text.dim,
        full.text.n_heads,
        full.text.n_kv_heads,
        full.text.head_dim,
    )
    assert small.text.n_layers == 2 and small.vision.hidden_size == full.vision.hidden_size


def test_the_12b_shape_reads_the_issues_bytes_per_token():
    """The bandwidth ceiling's numerator: 23.15 GB per token for the 12B shape in bfloat16 (issue #16)."""
    import torch

    from pixtral.config import preset
    from pixtral.engine.quantize import decoder_bytes_per_token
    from pixtral.gpu_check import random_model_on

    model = random_model_on(torch.device("meta"), preset("12b"), torch.bfloat16)
    assert round(decoder_bytes_per_token(model) / 1e9, 2) == 23.15
