"""The loop: schedule, invariance to micro-batching / activation checkpointing / packing, config errors,
exact resume after SIGKILL and SIGTERM."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pixtral.config import preset
from pixtral.model.init import init_random_weights_
from pixtral.model.pixtral import Pixtral
from pixtral.prompt.tokenizer import packaged_tokenizer
from pixtral.train.config import TrainConfigError, make_config
from pixtral.train.data import load_dataset
from pixtral.train.loop import LossModule, lr_factor, train
from pixtral.train.metrics import read_metrics
from pixtral.train.packing import RowSchedule, build_rows, collate
from tests.train.train_helpers import EXAMPLES, colour_dataset, small_config

REPO = Path(__file__).resolve().parents[2]


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    f = [lr_factor(s, warmup=4, total=20, min_ratio=0.1) for s in range(20)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(f[4:], f[5:], strict=False))
    assert lr_factor(20, 4, 20, 0.1) == pytest.approx(0.1)


def test_data_order_is_a_function_of_seed_and_step_and_ranks_split_the_global_batch():
    lengths = [5, 9, 3, 7, 2, 8, 4]
    a = RowSchedule(lengths, 16, pack=True, seed=3, rows_per_step=2)
    b = RowSchedule(lengths, 16, pack=True, seed=3, rows_per_step=2)
    for step in range(6):  # crosses several epochs
        rows, _ = a.step_rows(step)
        assert rows == b.step_rows(step)[0]
        assert a.rank_rows(step, 0, 2) + a.rank_rows(step, 1, 2) == rows
        assert all(sum(lengths[i] for i in row) <= 16 for row in rows)
    assert build_rows([0, 1, 2], [5, 9, 3], 16, pack=True) == [[0, 1], [2]]
    assert RowSchedule(lengths, 16, False, 4, 2).epoch_rows(0) != a.epoch_rows(0)


def test_packed_rows_give_the_same_loss_as_separate_rows():
    tok = packaged_tokenizer()
    ds = load_dataset(EXAMPLES / "data.jsonl", tok, 128)
    model = init_random_weights_(Pixtral(preset("tiny")), seed=1, std=0.05)
    root = LossModule(model)
    packed = collate([[0, 4, 5]], ds, 11, 16, packed=True)
    separate = collate([[0], [4], [5]], ds, 11, 16, packed=False)
    assert packed.mask is not None and packed.n_loss_tokens == separate.n_loss_tokens
    with torch.no_grad():
        lp = root(packed.token_ids, packed.labels, packed.images, packed.positions, packed.mask)
        ls = root(separate.token_ids, separate.labels, separate.images)
        wrong = root(
            packed.token_ids, packed.labels, packed.images
        )  # without the mask: samples see each other
    assert abs(float(lp) - float(ls)) <= 1e-4 * float(ls)
    assert abs(float(wrong) - float(ls)) > 1e-3


def test_micro_batching_and_activation_checkpointing_do_not_change_the_losses(tmp_path):
    data = colour_dataset(tmp_path)
    runs = {}
    for name, extra in {
        "micro1": {"micro_batch_size": 1},
        "micro4": {"micro_batch_size": 4},
        "ckpt": {"micro_batch_size": 2, "activation_checkpointing": True},
    }.items():
        cfg = small_config(tmp_path / name, data, max_steps=3, **extra)
        runs[name] = train(cfg).losses
    for name in ("micro4", "ckpt"):
        for step, loss in runs["micro1"].items():
            assert abs(runs[name][step] - loss) <= 1e-5, (name, step)
    assert runs["micro1"][3] < runs["micro1"][1]


def test_config_errors_say_what_to_fix(tmp_path):
    data = colour_dataset(tmp_path)
    with pytest.raises(TrainConfigError, match="unknown field"):
        make_config(None, {"data": str(data), "learning_rate": 1})
    with pytest.raises(TrainConfigError, match="not a multiple of micro_batch_size"):
        small_config(tmp_path, data, batch_size=3, micro_batch_size=2).accumulation_steps(1)
    with pytest.raises(TrainConfigError, match="no training data"):
        make_config(None, {})
    (tmp_path / "c.toml").write_text('data = "data.jsonl"\nlr = "fast"\n')
    with pytest.raises(TrainConfigError, match="lr='fast' is not a valid float"):
        make_config(tmp_path / "c.toml")
    (tmp_path / "c.toml").write_text('data = "data.jsonl"\nmax_steps = 7\n')
    cfg = make_config(tmp_path / "c.toml", {"lr": "0.01"})
    assert cfg.data == str(tmp_path / "data.jsonl") and cfg.max_steps == 7 and cfg.lr == 0.01
    cfg = small_config(tmp_path, data, max_steps=1)
    train(cfg)
    with pytest.raises(TrainConfigError, match="pass --resume"):
        train(cfg)


def test_toml_config_on_python_3_10_reads_with_tomli(tmp_path, monkeypatch):
    """Python 3.10 has no tomllib: the `tomli` dependency (same API) reads the file there."""
    import types

    calls = []
    fake = types.SimpleNamespace(
        loads=lambda text: calls.append(text) or {"data": "data.jsonl", "max_steps": 7}
    )
    monkeypatch.setitem(sys.modules, "tomli", fake)
    monkeypatch.setattr(sys, "version_info", (3, 10, 14, "final", 0))
    (tmp_path / "c.toml").write_text('data = "data.jsonl"\nmax_steps = 7\n')
    assert make_config(tmp_path / "c.toml").max_steps == 7
    assert calls == ['data = "data.jsonl"\nmax_steps = 7\n']


def _launch(cfg_path: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "pixtral.train", "--config", str(cfg_path), *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_step(metrics: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.is_file() and max(read_metrics(metrics), default=0) >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early:\n{proc.stdout.read()}")
        time.sleep(0.05)
    raise AssertionError("training did not reach the step in time")


def test_killed_and_terminated_runs_resume_with_identical_per_step_losses(tmp_path):
    data = colour_dataset(tmp_path)
    steps = 8
    common = {
        "max_steps": steps,
        "save_every": 1,
        "keep_last": 2,
        "micro_batch_size": 2,
        "deterministic": True,
    }
    reference = train(small_config(tmp_path / "ref", data, **common)).losses

    cfg = small_config(tmp_path / "resumed", data, **common)
    cfg_path = tmp_path / "resumed.json"
    cfg_path.write_text(json.dumps(cfg.to_dict()))
    metrics = Path(cfg.out_dir) / "metrics.jsonl"
    rng = random.Random()
    kill_at = rng.randint(2, 4)
    proc = _launch(cfg_path)  # 1) SIGKILL at a random step: no chance to save anything
    _wait_for_step(metrics, kill_at, proc)
    time.sleep(rng.random() * 0.3)
    proc.kill()
    proc.wait()
    proc = _launch(cfg_path, "--resume")  # 2) SIGTERM: finishes its step, saves, exits 143 (not 0: "done")
    _wait_for_step(metrics, kill_at + 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    assert "interrupted: checkpoint saved at step" in out
    logged_before = max(read_metrics(metrics))
    assert logged_before < steps
    final = train(cfg, resume=True)  # 3) in-process, to the end
    assert final.export_dir is not None and min(final.losses) == logged_before + 1

    losses = {step: r["loss"] for step, r in read_metrics(metrics).items()}
    assert sorted(losses) == list(range(1, steps + 1))
    assert losses == reference, f"killed at {kill_at}"
    assert not list((Path(cfg.out_dir) / "checkpoints").glob(".tmp_*"))
    assert len(list((Path(cfg.out_dir) / "checkpoints").glob("step_*"))) == 2  # keep_last


@pytest.mark.parametrize(
    "frozen",
    [{"mode": "lora", "lora_rank": 4}, {"freeze": ["vision_encoder", "adapter"]}],
    ids=["lora", "freeze"],
)
def test_runs_with_frozen_weights_resume_with_identical_losses_and_weights(tmp_path, frozen):
    """Frozen weights are left out of checkpoints; resuming must not ask for them back."""
    from pixtral.checkpoint.loader import load_model

    data = colour_dataset(tmp_path, n=2)
    common = {"max_steps": 4, "batch_size": 2, "save_every": 2, "deterministic": True, **frozen}
    reference = train(small_config(tmp_path / "ref", data, **common))
    cfg = small_config(tmp_path / "resumed", data, **common)
    first = train(cfg, stop_after=2)
    second = train(cfg, resume=True)
    assert sorted(first.losses) == [1, 2] and sorted(second.losses) == [3, 4]
    assert {**first.losses, **second.losses} == reference.losses
    want, _ = load_model(reference.export_dir)
    got, _ = load_model(second.export_dir)
    for name, tensor in want.state_dict().items():
        assert torch.equal(got.state_dict()[name], tensor), name


def test_eval_hook_runs_at_its_interval_and_its_numbers_are_logged(tmp_path, monkeypatch):
    import pixtral.train.hooks as hooks
    from pixtral.train.hooks import evals_task_hook

    seen = []

    def fake_run_eval(cfg):
        seen.append(cfg)
        assert (Path(cfg.engine_model) / "consolidated.safetensors").is_file()
        return {"tasks": {"chartqa": {"score": 0.25, "n": 4}}}

    monkeypatch.setattr(hooks, "run_eval", fake_run_eval)
    data = colour_dataset(tmp_path, n=2)
    cfg = small_config(
        tmp_path, data, max_steps=2, batch_size=2, eval_every=2, eval_task="chartqa", eval_limit=4
    )
    train(cfg, eval_hook=evals_task_hook)
    assert len(seen) == 1 and seen[0].tasks == ["chartqa"] and seen[0].limit == 4 and seen[0].in_process
    lines = [json.loads(x) for x in (Path(cfg.out_dir) / "metrics.jsonl").read_text().splitlines()]
    assert {"step": 2, "eval/tasks/chartqa/score": 0.25} in lines


def test_frozen_parts_do_not_change_and_bf16_autocast_trains(tmp_path):
    from pixtral.checkpoint.loader import load_model
    from pixtral.train.loop import build_model

    data = colour_dataset(tmp_path, n=2)
    cfg = small_config(
        tmp_path / "frozen", data, max_steps=2, batch_size=2, freeze=["vision_encoder", "adapter"]
    )
    fp32 = train(cfg)
    trained, _ = load_model(fp32.export_dir)
    base, _, _, _ = build_model(cfg)
    after, before = trained.state_dict(), base.state_dict()
    for name, tensor in before.items():
        same = torch.equal(after[name], tensor)
        assert same == name.startswith(("vision_encoder.", "vision_language_adapter.")), name
    bf16 = train(small_config(tmp_path / "bf16", data, max_steps=1, batch_size=2, precision="bf16"))
    assert abs(bf16.losses[1] - fp32.losses[1]) < 0.05


@pytest.mark.parametrize("preset_name", ["tiny", "tiny-mistral3"])
def test_a_text_only_micro_batch_runs_the_vision_side_of_every_family_shape(preset_name):
    """The blank image that keeps the ranks' graphs alike is one [IMG] token big: a patch, or a 2x2 block
    of patches for a model with the patch merger (a one-patch image cannot be merged)."""
    from pixtral.config import preset
    from pixtral.model.pixtral import Pixtral
    from pixtral.train.loop import LossModule

    torch.manual_seed(0)
    model = Pixtral(preset(preset_name))
    ids = torch.randint(1000, model.config.text.vocab_size, (1, 6))
    loss = LossModule(model)(ids, ids, [])
    loss.backward()
    assert torch.isfinite(loss)
    assert model.vision_language_adapter.w_in.weight.grad is not None  # the vision side ran (weight 0)


def test_freezing_the_adapter_freezes_the_familys_projector_norm_and_patch_merger():
    from pixtral.config import preset
    from pixtral.model.pixtral import Pixtral
    from pixtral.train.config import TrainConfig
    from pixtral.train.loop import configure_trainable

    model = Pixtral(preset("tiny-mistral3"))
    configure_trainable(model, TrainConfig(freeze=["adapter"]))
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    projector = [
        n for n, _ in model.named_parameters() if n.startswith(("pre_mm_projector_norm", "patch_merger"))
    ]
    assert projector and set(projector) <= frozen
    assert {n for n in frozen if n.startswith("vision_language_adapter")} == {
        n for n, _ in model.named_parameters() if n.startswith("vision_language_adapter")
    }
    assert not any(n.startswith(("vision_encoder", "layers")) for n in frozen)


def test_device_takes_cuda_n_like_the_other_commands_and_names_a_bad_one(tmp_path):
    data = colour_dataset(tmp_path, n=2)
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert small_config(tmp_path, data, device=device).validated().device == device
    with pytest.raises(TrainConfigError, match=r"device='gpu0' is not one of auto, cpu, cuda or cuda:N"):
        small_config(tmp_path, data, device="gpu0").validated()
    if not torch.cuda.is_available():
        with pytest.raises(TrainConfigError, match="device 'cuda:1': no CUDA device is available here"):
            train(small_config(tmp_path, data, device="cuda:1", max_steps=1))
