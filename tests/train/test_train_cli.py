"""The command line: flags override the config file, errors are one line, --nproc re-launches itself, and
--help lists each field's choices, examples and the exit statuses."""

from __future__ import annotations

import argparse

import pytest

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


def test_help_lists_choices_examples_and_exit_statuses(capsys):
    parser = argparse.ArgumentParser(prog="pixtral")
    add_train_parser(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    text = capsys.readouterr().out
    for expected in (
        "--mode {full,lora}",
        "--freeze {vision_encoder,adapter,decoder}",
        "--distributed {ddp,fsdp}",
    ):
        assert expected in text
    assert "examples:" in text and "pixtral train --config examples/train/config.toml" in text
    assert "143" in text and "--resume" in text.split("exit status:")[1]


def test_a_value_outside_the_choices_is_one_line_naming_the_field(tmp_path, capsys):
    assert main(["--data", "x.jsonl", "--freeze", "decoder,vision"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: train config: freeze: 'vision' is not one of") and "\n" not in err
