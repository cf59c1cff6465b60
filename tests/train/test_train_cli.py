"""The command line: flags override the config file, errors are one line, --nproc re-launches itself."""

from __future__ import annotations

import argparse

from pixtral.train.cli import _add_arguments, add_train_parser, main, torchrun_argv
from pixtral.train.config import make_config, overrides_from_args


def test_flags_round_trip_through_the_torchrun_command_line(tmp_path):
    parser = argparse.ArgumentParser()
    _add_arguments(parser)
    args = parser.parse_args(
        [
            "--config",
            "c.toml",
            "--nproc",
            "2",
            "--lr",
            "0.5",
            "--pack",
            "--no-progress",
            "--freeze",
            "vision_encoder,adapter",
            "--resume",
        ]
    )
    argv = torchrun_argv(args)
    assert "--nproc" not in argv
    again = parser.parse_args(argv)
    assert overrides_from_args(again) == overrides_from_args(args)
    assert again.resume and again.config == "c.toml"
    cfg = make_config(None, {**overrides_from_args(again), "data": "x.jsonl"})
    assert cfg.freeze == ["vision_encoder", "adapter"] and cfg.pack and cfg.lr == 0.5 and not cfg.progress


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: config file") and "\\n" not in err
    assert (
        main(["--data", str(tmp_path / "none.jsonl"), "--out-dir", str(tmp_path / "o"), "--no-progress"]) == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_add_train_parser_registers_the_subcommand():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_train_parser(sub)
    args = parser.parse_args(["train", "--max-steps", "3"])
    assert args.handler.__name__ == "handle_train" and args.max_steps == "3"
