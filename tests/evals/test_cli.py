"""The `eval` parser as the main CLI will mount it, and its help."""

from __future__ import annotations

import argparse

from pixtral.evals.cli import add_eval_parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixtral")
    add_eval_parser(parser.add_subparsers(title="commands", metavar="COMMAND"))
    return parser


def test_mounts_on_a_parent_parser_and_defaults_to_run(capsys):
    p = _parser()
    args = p.parse_args(
        ["eval", "--task", "chartqa,docvqa", "--endpoint", "http://h:1/v1", "--output-dir", "o"]
    )
    assert args.eval_action is None and args.task == ["chartqa,docvqa"] and callable(args.handler)
    args = p.parse_args(["eval", "run", "--task", "vqav2", "--limit", "5", "--scoring", "mistral-compat"])
    assert args.eval_action == "run" and args.limit == 5 and args.scoring == "mistral-compat"
    args = p.parse_args(["eval", "compare", "a", "b", "--json"])
    assert args.eval_action == "compare" and args.json
    assert args.handler(p.parse_args(["eval", "tasks"])) == 0
    assert "mm_mt_bench" in capsys.readouterr().out


def test_missing_options_are_one_line_errors(capsys):
    p = _parser()
    args = p.parse_args(["eval", "--endpoint", "http://h:1/v1"])
    assert args.handler(args) == 2
    assert capsys.readouterr().err.startswith("error: pass --task NAME")
    args = p.parse_args(["eval", "--task", "chartqa", "--output-dir", "o"])
    assert args.handler(args) == 2
    assert "--endpoint URL" in capsys.readouterr().err


def test_help_teaches(capsys):
    p = _parser()
    try:
        p.parse_args(["eval", "--help"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    for needle in (
        "examples:",
        "--scoring",
        "mistral-compat",
        "resumes",
        "--judge-endpoint",
        "--data-dir",
        "compare",
    ):
        assert needle in out


def test_dataset_override_needs_a_single_task(capsys):
    p = _parser()
    args = p.parse_args(["eval", "--task", "chartqa,docvqa", "--dataset", "me/mine", "--endpoint", "http://h:1/v1",
                         "--output-dir", "o"])  # fmt: skip
    assert args.handler(args) == 2
    assert "single --task" in capsys.readouterr().err
