"""The `pixtral` command, driven as a user would (in-process for speed)."""

from __future__ import annotations

import io
import json

import pytest

from pixtral.cli import main

SAMPLE = "examples/sample.png"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny"
    assert main(["init", "--out", str(folder), "--preset", "tiny", "--seed", "1"]) == 0
    return folder


def test_generate_json_with_images(tiny_dir, capsys):
    assert (
        main(
            [
                "generate",
                "--model",
                str(tiny_dir),
                "--image",
                SAMPLE,
                "--image",
                SAMPLE,
                "--prompt",
                "Compare.",
                "--max-tokens",
                "7",
                "--json",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["finish_reason"] == "length" and len(out["token_ids"]) == out["completion_tokens"] == 7
    assert out["prompt_tokens"] > 2 * 20  # two 320x200 images: 20x13 patches each
    assert out["untrained"] is True and "untrained" in captured.err


def test_generate_streams_the_same_text_as_json(tiny_dir, capsys):
    args = [
        "generate",
        "--model",
        str(tiny_dir),
        "--prompt",
        "Hello",
        "--max-tokens",
        "9",
        "--seed",
        "3",
        "--temperature",
        "0.7",
    ]
    assert main(args + ["--json"]) == 0
    text = json.loads(capsys.readouterr().out)["text"]
    assert main(args) == 0
    assert capsys.readouterr().out == text + "\n"


def test_default_model_is_the_bundled_demo_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIXTRAL_HOME", str(tmp_path))
    monkeypatch.delenv("PIXTRAL_DEFAULT_MODEL", raising=False)
    assert (
        main(
            [
                "generate",
                "--image",
                SAMPLE,
                "--prompt",
                "What is in the image?",
                "--max-tokens",
                "4",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["model"] == "default"
    assert not (tmp_path / "models").exists()  # nothing is created: the model ships with the package


def test_info_and_init_formats(tmp_path, capsys):
    assert main(["init", "--out", str(tmp_path / "hf"), "--format", "hf", "--dtype", "bfloat16"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "hf"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "hf" and info["dtype"] == "bfloat16" and info["untrained"] is True
    assert (
        info["parameters"]["total"]
        == info["parameters"]["decoder"]
        + info["parameters"]["vision_encoder"]
        + info["parameters"]["adapter"]
    )
    assert main(["init", "--out", str(tmp_path / "hf")]) == 2  # refuses to overwrite
    assert "not empty" in capsys.readouterr().err


def test_chat_multi_turn_with_an_image(tiny_dir, monkeypatch, capsys):
    script = f"Hello\n/image {SAMPLE}\nWhat is this?\n/image missing.png\n/reset\nBye\n/quit\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    assert main(["chat", "--model", str(tiny_dir), "--max-tokens", "5", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("pixtral> ") == 3
    assert f"(image attached to your next message: {SAMPLE})" in out
    assert "(not attached: the image file 'missing.png' does not exist" in out
    assert "(conversation cleared)" in out


@pytest.mark.parametrize("leave", ["/quit", "/exit", "quit", "exit"])
def test_chat_refuses_a_bad_attachment_and_stays_usable(tiny_dir, tmp_path, monkeypatch, capsys, leave):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    script = f"/image {notes}\nHello\n/help\n/bogus thing\n//etc is a folder\nAgain\n{leave}\nnever sent\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    assert main(["chat", "--model", str(tiny_dir), "--max-tokens", "3", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert f"(not attached: the image file '{notes}' is not a readable image" in out
    assert "image attached" not in out and "(error" not in out
    assert (
        out.count("pixtral> ") == 3
    )  # Hello, "/etc is a folder", Again; /bogus and the line after quit never
    assert "/image PATH" in out and "/reset" in out  # /help lists the commands
    assert "(unknown command /bogus: nothing was sent" in out


def test_bad_input_is_one_line_with_exit_code_2(tiny_dir, capsys):
    assert main(["generate", "--model", str(tiny_dir), "--image", "nope.png", "--prompt", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "nope.png" in err[-1]
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "x", "--top-p", "0"]) == 2
    assert "top_p" in capsys.readouterr().err


def test_help_teaches():
    with pytest.raises(SystemExit):
        main(["--help"])


def test_bench_runs_on_the_tiny_preset(tmp_path, capsys):
    assert (
        main(["bench", "--preset", "tiny", "--tokens", "4", "--no-peer", "--json", str(tmp_path / "b.json")])
        == 0
    )
    out = capsys.readouterr().out
    assert "decode tokens/s, batch 1" in out and "aggregate decode tokens/s, 8 concurrent" in out
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert all(r["ours"] > 0 for r in rows)


def test_bench_runs_over_two_tensor_parallel_ranks(tmp_path, capsys):
    """`pixtral bench --tensor-parallel-size 2`: the engine's rows from a model split over 2 gloo ranks."""
    argv = ["bench", "--preset", "tiny", "--tokens", "4", "--no-peer", "--tensor-parallel-size", "2"]
    assert main([*argv, "--device", "cpu", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "tensor parallel over 2 ranks" in out and "vision encoder" not in out
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert rows and all(r["ours"] > 0 for r in rows)


def test_threads_option_sets_torch_threads(tiny_dir, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        argv = ["generate", "--model", str(tiny_dir), "--prompt", "Hi", "--max-tokens", "2", "--threads", "1"]
        assert main(argv) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_chat_message_the_engine_refuses_is_dropped_with_its_images(capsys):
    from types import SimpleNamespace

    from PIL import Image

    from pixtral.cli import TerminalChat
    from pixtral.errors import InputError
    from pixtral.prompt.images import LOCAL_MEDIA

    class Engine:
        media = LOCAL_MEDIA

        def stream(self, messages, params, tools=None):
            if any(isinstance(m["content"], list) for m in messages):
                raise InputError("message 0 (user) part 0: refused")
            yield SimpleNamespace(text=f"seen {len(messages)}", token_ids=[], reasoning="")

    chat = TerminalChat(Engine(), params=None)
    chat.images = [Image.new("RGB", (4, 4))]
    assert chat.handle("first") and chat.handle("second")
    out = capsys.readouterr().out
    assert "(error: message 0 (user) part 0: refused. The message was not sent" in out
    assert "(its 1 image(s) were dropped)" in out
    assert "pixtral> seen 1\n" in out and chat.history[0] == {"role": "user", "content": "second"}


def test_version_is_the_installed_package_version(capsys):
    import importlib.metadata
    import subprocess
    import sys

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"pixtral {importlib.metadata.version('pixtral')}\n"
    child = subprocess.run([sys.executable, "-m", "pixtral", "--version"], capture_output=True, text=True)
    assert child.returncode == 0 and child.stdout.startswith("pixtral ")


@pytest.mark.parametrize(
    "command", ["generate", "chat", "init", "convert", "info", "serve", "eval", "bench", "synth"]
)
def test_every_command_help_has_examples(command, capsys):
    import re

    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert re.search(rf"^\s+pixtral {command}\b", capsys.readouterr().out, re.MULTILINE)


def test_serve_help_shows_every_flag_with_one_default(capsys):
    from pixtral.cli import build_parser

    (commands,) = [a for a in build_parser()._actions if a.dest == "==SUPPRESS==" and a.choices]
    flags = [a for a in commands.choices["serve"]._actions if a.option_strings and a.dest != "help"]
    assert [a.option_strings[0] for a in flags if not a.help] == []
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    model_help = out[out.index("--model MODEL ") : out.index("--host HOST ")]
    assert "(default: None)" not in out and model_help.count("default") == 1
