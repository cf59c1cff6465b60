"""torchrun, 2 CPU ranks over gloo: DDP and FSDP2 give the 1-process per-step losses (same global batch),
a checkpoint written by 2 FSDP ranks resumes on 1 process, and FSDP2 with frozen parts trains on data where
one rank's micro-batch has an image and the other's has none. `pixtral train --nproc 2` reports the ranks'
error once (exit status 2) and an interruption as 143, without torchrun's traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pixtral.train.loop import train
from pixtral.train.metrics import read_metrics
from tests.train.train_helpers import colour_dataset, small_config

REPO = Path(__file__).resolve().parents[2]
STEPS = 3


def _torchrun(cfg_path: Path, strategy: str, timeout: float = 300) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "pixtral.train", "--config", str(cfg_path), "--distributed", strategy]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # a hang: torchrun stops its ranks on SIGTERM (SIGKILL after 30 s)
        proc.terminate()
        out, _ = proc.communicate(timeout=90)
        raise AssertionError(f"torchrun did not finish in {timeout} s:\n{out[-3000:]}") from None
    assert proc.returncode == 0, out[-6000:]


@pytest.mark.slow
def test_two_rank_ddp_and_fsdp_match_one_process_and_fsdp_checkpoint_resumes_on_one(tmp_path):
    data = colour_dataset(tmp_path, n=3)
    # A text-only sample: the rank that gets it has a micro-batch without images, while the vision encoder
    # trains (DDP would fail on unused parameters, FSDP would wait forever without LossModule's blank image).
    text_only = {
        "messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]
    }
    data.write_text(data.read_text() + json.dumps(text_only) + "\n")
    common = {
        "max_steps": STEPS,
        "batch_size": 4,
        "micro_batch_size": 1,
        "save_every": 2,
        "weight_decay": 0.1,
    }
    single_cfg = small_config(tmp_path / "one", data, **common)
    single = train(single_cfg).losses
    single_norms = {
        s: r["grad_norm"] for s, r in read_metrics(Path(single_cfg.out_dir) / "metrics.jsonl").items()
    }

    losses = {}
    for strategy in ("ddp", "fsdp"):
        cfg = small_config(tmp_path / strategy, data, distributed=strategy, **common)
        path = tmp_path / f"{strategy}.json"
        path.write_text(json.dumps(cfg.to_dict()))
        _torchrun(path, strategy)
        records = read_metrics(Path(cfg.out_dir) / "metrics.jsonl")
        losses[strategy] = {s: r["loss"] for s, r in records.items()}
        # Adam hides a wrong gradient scale from the losses; the gradient norm does not.
        for s, r in records.items():
            assert abs(r["grad_norm"] - single_norms[s]) <= 1e-5 * single_norms[s], (strategy, s)
    report = {name: max(abs(run[s] - single[s]) for s in single) for name, run in losses.items()}
    print("max |loss(2 ranks) - loss(1 process)| per step:", report)
    for name, run in losses.items():
        assert sorted(run) == sorted(single)
        assert report[name] <= 1e-5, name

    # The FSDP run's step-2 checkpoint (2 ranks, sharded) continues on 1 process.
    fsdp_ckpt = tmp_path / "fsdp" / "run" / "checkpoints" / "step_00000002"
    assert sorted(p.name for p in fsdp_ckpt.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    resumed_cfg = small_config(tmp_path / "resumed", data, **common)
    shutil.copytree(fsdp_ckpt, Path(resumed_cfg.out_dir) / "checkpoints" / fsdp_ckpt.name)
    resumed = train(resumed_cfg, resume=True).losses
    assert sorted(resumed) == [3]
    assert abs(resumed[3] - single[3]) <= 1e-5


FROZEN = {
    "lora_decoder": {"mode": "lora", "lora_targets": ["decoder"]},
    "freeze_vision": {"freeze": ["vision_encoder", "adapter"]},
    "lora_everywhere": {"mode": "lora", "lora_targets": ["decoder", "encoder", "adapter"]},
}


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("frozen", FROZEN.values(), ids=FROZEN.keys())
def test_fsdp_with_frozen_parts_trains_when_only_one_rank_has_an_image(tmp_path, frozen):
    """One image sample and one text-only sample, one row per rank per step: at every step one rank encodes
    an image and the other has none. FSDP's per-module collectives must still line up on both ranks."""
    data = colour_dataset(tmp_path, n=1)
    text_only = {
        "messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]
    }
    data.write_text(data.read_text() + json.dumps(text_only) + "\n")
    common = {"max_steps": 2, "batch_size": 2, "micro_batch_size": 1, "lora_rank": 4, **frozen}
    single = train(small_config(tmp_path / "one", data, **common)).losses
    cfg = small_config(tmp_path / "fsdp", data, distributed="fsdp", **common)
    path = tmp_path / "fsdp.json"
    path.write_text(json.dumps(cfg.to_dict()))
    _torchrun(path, "fsdp", timeout=240)
    losses = {s: r["loss"] for s, r in read_metrics(Path(cfg.out_dir) / "metrics.jsonl").items()}
    assert sorted(losses) == sorted(single) == [1, 2]
    for s, loss in single.items():
        assert abs(losses[s] - loss) <= 1e-5, (s, losses[s], loss)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_nproc_launcher_prints_the_ranks_error_once_and_passes_on_sigterm(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [}\n')
    cmd = [sys.executable, "-m", "pixtral.cli", "train", "--nproc", "2", "--device", "cpu", "--no-progress"]
    out = subprocess.run(
        [*cmd, "--data", str(bad), "--out-dir", str(tmp_path / "bad")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.splitlines() == ["error: bad.jsonl:1: not valid JSON (Expecting value at column 15)"]

    data = colour_dataset(tmp_path, n=2)
    cfg = small_config(tmp_path, data, max_steps=1000, batch_size=2, micro_batch_size=1)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(cfg.to_dict()))
    proc = subprocess.Popen(
        [*cmd, "--config", str(path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        metrics = Path(cfg.out_dir) / "metrics.jsonl"
        deadline = time.time() + 240
        while (
            not (metrics.is_file() and read_metrics(metrics))
            and proc.poll() is None
            and time.time() < deadline
        ):
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, output[-3000:]
    assert "interrupted: checkpoint saved at step" in output and "Traceback" not in output
    assert list((Path(cfg.out_dir) / "checkpoints").glob("step_*"))
