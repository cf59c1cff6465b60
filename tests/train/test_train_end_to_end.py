"""End to end: a tiny random model overfits image -> colour questions, is exported, loaded by the engine and
by `pixtral generate`, and answers every question correctly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pixtral.engine import Engine, SamplingParams
from pixtral.train.loop import train
from tests.train.train_helpers import COLOURS, colour_dataset, small_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_model_overfits_and_answers_through_the_engine_and_the_cli(tmp_path):
    data = colour_dataset(tmp_path, n=4)
    cfg = small_config(
        tmp_path,
        data,
        max_steps=40,
        batch_size=4,
        micro_batch_size=4,
        lr=8e-3,
        warmup_steps=5,
        min_lr_ratio=0.2,
        grad_clip=1.0,
        val_data=str(data),
        val_every=20,
    )
    result = train(cfg)
    assert result.losses[40] < 0.1, result.losses
    records = [json.loads(line) for line in (Path(cfg.out_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [20, 40]
    for folder in (result.export_dir,):  # the hf export is checked against it in test_train_lora
        engine = Engine.load(folder)
        for colour in COLOURS:
            messages = [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image_url",
                            "image_url": {"url": str(tmp_path / "images" / f"{colour}.png")},
                        },
                        {"type": "text", "text": "What colour is it?"},
                    ],
                }
            ]
            out = engine.generate(messages, SamplingParams(max_tokens=8, temperature=0.0))
            assert out.text == colour.capitalize() + ".", (folder, colour, out)
            assert out.finish_reason == "stop"

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "pixtral.cli",
            "generate",
            "--model",
            str(result.export_dir),
            "--image",
            str(tmp_path / "images" / "blue.png"),
            "--prompt",
            "What colour is it?",
            "--max-tokens",
            "8",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert cli.stdout.strip() == "Blue."
