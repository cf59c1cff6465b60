"""Tensor-parallel failures are clear and quick: a size that does not divide the KV heads is refused before
any process starts, naming the valid sizes; a rank killed mid-request ends the engine's process with an
error naming the rank within seconds (never a hang)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pixtral.checkpoint.loader import save_model
from pixtral.errors import ConfigError
from pixtral.parallel.launch import LoadSpec, start
from tests.factories import random_model

_ENGINE = r"""
import multiprocessing, sys
from pixtral.engine import Engine
from pixtral.engine.sampling import SamplingParams
engine = Engine.load(tensor_parallel_size=2, device="cpu")
print("pids", *[p.pid for p in multiprocessing.active_children()], flush=True)
for event in engine.stream([{"role": "user", "content": "Count"}], SamplingParams(max_tokens=100000, ignore_eos=True, temperature=0)):
    print("token", flush=True)
print("finished", flush=True)
"""


def test_a_size_that_does_not_divide_the_kv_heads_is_refused_with_the_valid_sizes(tmp_path):
    save_model(random_model(), tmp_path, "native")  # 2 KV heads, FFN 96
    with pytest.raises(ConfigError, match=r"--tensor-parallel-size 3: .* 2 KV heads .* valid sizes are 1, 2"):
        start(LoadSpec(str(tmp_path), "float32", "cpu"), 3)


def test_killing_a_rank_mid_request_ends_the_engine_with_an_error_within_seconds():
    proc = subprocess.Popen(
        [sys.executable, "-c", _ENGINE], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        pids = proc.stdout.readline().split()
        assert pids[0] == "pids", proc.stderr.read()
        assert proc.stdout.readline().strip() == "token"  # the request is decoding
        os.kill(int(pids[1]), signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(timeout=30)
        elapsed = time.monotonic() - killed
    finally:
        proc.kill()
    stderr = proc.stderr.read()
    assert proc.returncode != 0 and elapsed < 5.0, (elapsed, stderr[-2000:])
    assert "tensor-parallel rank" in stderr, (proc.returncode, stderr[-2000:])
