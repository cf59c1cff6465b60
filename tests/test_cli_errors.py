"""Every subcommand given wrong inputs answers with one `error:` line and exit status 2, never a traceback.

The cases run in one child process (`pixtral.cli.main` once per case, stderr captured per case), so what a
user sees is what is checked: an exception escaping `main()` prints a traceback there just as it would from
the console script, and warnings or thread errors written to stderr are caught too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pixtral.cli import main
from pixtral.default_model import BUNDLED_MODEL
from tests.prompt.prompt_helpers import png_declaring

DRIVER = r"""
import contextlib, io, json, signal, sys, traceback
from pixtral.cli import main

def too_long(signum, frame):
    raise TimeoutError("still running after 60 s: the wrong input was not refused")

signal.signal(signal.SIGALRM, too_long)
results = []
for argv in json.load(sys.stdin):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        signal.alarm(60)
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse
            rc = e.code
        except BaseException:
            traceback.print_exc()
            rc = 1
        signal.alarm(0)
    results.append({"argv": argv, "rc": rc, "stderr": err.getvalue()})
    print(argv, rc, file=sys.stderr, flush=True)
json.dump(results, sys.stdout)
"""


def run_cases(cases: list[list[str]], cwd: Path, timeout: float = 900) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-c", DRIVER],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wrong_inputs(tmp: Path) -> list[list[str]]:
    """(argv) cases, each wrong in one way a user could be."""
    text = tmp / "notes.txt"
    text.write_text("not an image\n")
    full = tmp / "full"
    full.mkdir()
    (full / "x").write_text("x")
    model = str(BUNDLED_MODEL)
    bomb = tmp / "bomb.png"  # declares 10,000 x 10,000 pixels: past Pillow's warning threshold and ours
    bomb.write_bytes(png_declaring(10_000, 10_000))
    return [
        ["generate", "--prompt", "hi", "--threads", "-3"],
        ["generate", "--prompt", "hi", "--threads", "0"],
        ["generate", "--prompt", "hi", "--quantize", "int4", "--group-size", "7"],
        ["generate", "--prompt", "hi", "--max-tokens", "-1"],
        ["generate", "--prompt", "hi", "--temperature", "-1"],
        ["generate", "--prompt", "hi", "--image", str(text)],
        ["generate", "--prompt", "hi", "--image", str(full)],
        ["generate", "--prompt", "hi", "--image", str(bomb)],
        ["generate", "--prompt", "hi", "--model", str(tmp / "missing")],
        ["generate", "--prompt", "hi", "--model", str(text)],
        ["generate", "--prompt", "hi", "--model", str(full)],
        ["chat", "--threads", "-1"],
        ["chat", "--model", str(tmp / "missing")],
        ["init", "--out", "/proc/forbidden", "--preset", "tiny"],
        ["init", "--out", str(text / "sub"), "--preset", "tiny"],
        ["init", "--out", str(full), "--preset", "tiny"],
        ["convert", model, str(text / "sub"), "--to", "hf"],
        ["convert", model, "/proc/forbidden", "--to", "hf"],
        ["convert", model, str(full), "--to", "native"],
        ["convert", str(tmp / "missing"), str(tmp / "out"), "--to", "hf"],
        ["convert", model, str(tmp / "out2"), "--to", "hf", "--merge-lora", str(tmp / "missing")],
        ["convert", model, str(text / "x.gguf"), "--to", "gguf"],
        ["info", str(tmp / "missing")],
        ["info", str(text)],
        ["info", str(full)],
        ["serve", "--threads", "0", "--port", "0"],
        ["serve", "--port", "70000"],
        ["serve", "--max-n", "0", "--port", "0"],
        ["serve", "--max-concurrency", "-1", "--port", "0"],
        ["serve", "--request-timeout", "-5", "--port", "0"],
        ["eval", "--task", "nope", "--output-dir", str(tmp / "runs")],
        ["eval", "--output-dir", str(tmp / "runs")],
        ["eval", "report", str(tmp / "missing")],
        ["eval", "compare", str(tmp / "missing"), str(full)],
        ["train", "--config", str(tmp / "missing.toml")],
        ["train", "--config", str(text)],
        ["bench", "--preset", "tiny", "--tokens", "0"],
        ["bench", "--preset", "tiny", "--tokens", "1"],
        ["eval", "--task", "synthetic", "--concurrency", "0", "--output-dir", str(tmp / "runs")],
        ["eval", "--task", "synthetic", "--timeout", "-1", "--output-dir", str(tmp / "runs")],
        ["eval", "--task", "synthetic", "--limit", "0", "--output-dir", str(tmp / "runs")],
        ["eval", "compare", str(full), str(full), "--bootstrap", "0"],
        ["synth", "--out", str(text / "sub"), "--n", "2", "--no-progress"],
        ["synth", "--out", "/proc/forbidden", "--n", "2", "--no-progress"],
        ["synth", "--out", str(tmp / "s"), "--n", "0"],
        ["synth", "--out", str(tmp / "s"), "--tasks", "nope"],
        ["synth", "--out", str(full), "--n", "2", "--no-progress"],
    ]


def test_every_subcommand_refuses_wrong_inputs_in_one_line(tmp_path):
    bad = []
    for r in run_cases(wrong_inputs(tmp_path), cwd=tmp_path):
        lines = r["stderr"].strip().splitlines()
        leaked = "Traceback" in r["stderr"] or "Warning" in r["stderr"]
        if r["rc"] != 2 or leaked or not lines or "error:" not in lines[-1]:
            bad.append(f"{r['argv']} -> rc {r['rc']}:\n{r['stderr'][-600:]}")
    assert not bad, "\n\n".join(bad)


def test_gguf_export_without_gguf_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
    argv = ["convert", str(BUNDLED_MODEL), str(tmp_path / "m.gguf"), "--to", "gguf"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "pip install 'pixtral[gguf]'" in err[0]
    assert not (tmp_path / "m.gguf").exists()


def test_group_size_help_choices_and_quantizer_agree(capsys):
    from pixtral.engine.quantize import GROUP_SIZES

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"int4 group size: {', '.join(map(str, GROUP_SIZES))}" in help_text
    with pytest.raises(SystemExit) as refused:
        main(["generate", "--prompt", "hi", "--quantize", "int4", "--group-size", "7"])
    assert refused.value.code == 2
    assert f"choose from {', '.join(map(str, GROUP_SIZES))}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--prompt", "hi", "--threads", "0"],
        ["chat", "--threads", "-1"],
        ["serve", "--threads", "0"],
        ["serve", "--port", "65536"],
        ["serve", "--max-queue", "-1"],
        ["serve", "--remote-timeout", "0"],
        ["bench", "--tokens", "1"],
        ["eval", "--task", "x", "--concurrency", "0"],
        ["eval", "--task", "x", "--timeout", "nan"],
        ["eval", "--task", "x", "--limit", "0"],
        ["eval", "--task", "x", "--retries", "-1"],
        ["eval", "compare", "a", "b", "--bootstrap", "0"],
    ],
)
def test_out_of_range_numbers_are_refused_while_parsing(argv, capsys):
    flag = next(a for a in argv if a.startswith("--") and a not in ("--task", "--prompt"))
    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == 2 and f"argument {flag}: expected " in capsys.readouterr().err
