"""End to end: a tiny random model overfits image -> colour questions, is exported, loaded by the engine and
by `pixtral generate`, and answers every question correctly; the README's training quick-start learns what
the README prints, from another random start too."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pixtral.engine import Engine, SamplingParams
from pixtral.train.config import make_config
from pixtral.train.loop import train
from tests.train.train_helpers import COLOURS, EXAMPLES, colour_dataset, small_config

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


def _readme_quick_start() -> tuple[str, str, str]:
    """(config, image, answer) of the README's training quick-start."""
    section = (REPO / "README.md").read_text().split("## Training", 1)[1]
    config = re.search(r"pixtral train --config (\S+)", section).group(1)
    image = re.search(r"--image (\S+)", section).group(1)
    answer = re.search(r"# -> (\S+)", section).group(1)
    return config, image, answer


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_readme_training_quick_start_learns_what_the_readme_prints(tmp_path):
    """The README's config answers the README's question as printed, and every other colour question of
    the bundled data: the trained squares and the held-out circles (a recipe that gets those right has a
    margin that another machine's arithmetic does not overturn)."""
    config, image, answer = _readme_quick_start()
    cfg = make_config(
        REPO / config, {"out_dir": str(tmp_path / "run"), "progress": False, "tensorboard": False}
    )
    result = train(cfg)
    engine = Engine.load(result.export_dir)
    labels = {}  # image -> answer, from the bundled data itself
    for name in ("data.jsonl", "val.jsonl"):
        for line in (EXAMPLES / name).read_text().splitlines():
            user, reply = json.loads(line)["messages"][-2:]
            if (
                isinstance(user["content"], list)
                and user["content"][-1]["text"] == "What colour is the shape?"
            ):
                labels[user["content"][0]["image_url"]["url"]] = reply["content"]
    assert len(labels) == 8 and labels[str(Path(image).relative_to("examples/train"))] == answer
    answers = {}
    for url in labels:
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": str(EXAMPLES / url)}},
                    {"type": "text", "text": "What colour is the shape?"},
                ],
            }
        ]
        answers[url] = engine.generate(messages, SamplingParams(max_tokens=8, temperature=0.0)).text
    assert answers == labels
