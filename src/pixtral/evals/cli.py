"""``pixtral eval``: run the paper's benchmarks against any OpenAI-compatible endpoint or the in-process engine.

Wiring: the main CLI calls ``add_eval_parser(subparsers)``; the parser's ``handler`` default takes the parsed
namespace and returns an exit code. ``python -m pixtral.evals`` runs the same parser on its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pixtral.argtypes import (
    add_tensor_parallel_option,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from pixtral.errors import PixtralError
from pixtral.evals.compare import compare_runs, print_comparison
from pixtral.evals.config import EvalConfig
from pixtral.evals.errors import EvalConfigError
from pixtral.evals.judge import DEFAULT_JUDGE_URL
from pixtral.evals.metrics import FIXED
from pixtral.evals.report import render_reports
from pixtral.evals.runner import run_eval
from pixtral.evals.tasks import LMMS_EVAL_NAMES, TASKS

EPILOG = """\
examples:
  # the paper's protocol (Explicit prompts, fixed scoring) against vLLM, data from the Hugging Face hub
  pixtral eval --task chartqa --endpoint http://localhost:8000/v1 --output-dir runs/pixtral
  # several tasks, two replicas load-balanced, 32 requests in flight, first 200 rows of each task
  pixtral eval run --task mmmu,mathvista --endpoint http://gpu1:8000 --endpoint http://gpu2:8000 \\
      --concurrency 32 --limit 200 --output-dir runs/pixtral
  # MM-MT-Bench, judged by gpt-4o-2024-05-13 (key from $OPENAI_API_KEY), or by any OpenAI-compatible judge
  pixtral eval --task mm_mt_bench --endpoint http://localhost:8000/v1 --output-dir runs/pixtral
  pixtral eval --task mm_mt_bench --endpoint http://localhost:8000/v1 --judge-endpoint http://judge:8001/v1 \\
      --judge-model Qwen/Qwen2-VL-72B --output-dir runs/pixtral-local-judge
  # offline: a local folder in the dataset's schema (parquet/arrow/jsonl, one sub-folder per task)
  pixtral eval --task docvqa --data-dir ~/data/evals --endpoint http://localhost:8000/v1 --output-dir runs/x
  # numbers comparable with mistral-evals (its quirks reproduced), then the difference with CIs
  pixtral eval --task chartqa --scoring mistral-compat --endpoint ... --output-dir runs/compat
  pixtral eval compare runs/compat runs/pixtral

Re-running the same command resumes: finished answers and verdicts are read from OUTPUT_DIR/store.sqlite
and never requested again. Outputs: results.json, TASK.items.jsonl, report.md, report.html.
"""


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to evaluate")
    g.add_argument("--task", action="append", default=None, metavar="NAME",
                   help="mm_mt_bench, mmmu, mathvista, chartqa, docvqa, vqav2, synthetic, or lmms-eval's names (mmmu_val, "
                   "mathvista_testmini, docvqa_val, vqav2_val); repeat or comma-separate")  # fmt: skip
    g.add_argument(
        "--output-dir", type=Path, default=None, help="run folder: store, results and reports (required)"
    )
    g = p.add_argument_group("model")
    g.add_argument("--endpoint", action="append", default=None, metavar="URL",
                   help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1; repeat to load-balance")  # fmt: skip
    g.add_argument("--model", default=None, help="served model name (default: the first of GET /v1/models)")
    g.add_argument(
        "--api-key-env", default=None, metavar="VAR", help="environment variable holding the model API key"
    )
    g.add_argument("--in-process", action="store_true", help="generate with pixtral.engine in this process")
    g.add_argument(
        "--engine-model", default=None, help="model folder or hub id for --in-process (default: bundled)"
    )
    g.add_argument(
        "--engine-dtype",
        default=None,
        choices=["float32", "bfloat16"],
        help="dtype for --in-process (default: float32 on the CPU, bfloat16 on CUDA)",
    )
    g.add_argument(
        "--engine-device",
        default=None,
        help="device for --in-process: auto (CUDA when available, the default), cpu, cuda or cuda:N",
    )
    add_tensor_parallel_option(g)
    g.add_argument(
        "--concurrency", type=positive_int, default=8, help="requests in flight to the model (default 8)"
    )
    g.add_argument("--timeout", type=positive_float, default=600.0, help="seconds per request (default 600)")
    g.add_argument(
        "--retries", type=non_negative_int, default=5, help="retries on 429/5xx/connection errors (default 5)"
    )
    g.add_argument(
        "--backoff",
        type=non_negative_float,
        default=1.0,
        help="first retry delay in seconds, doubling (default 1)",
    )
    g.add_argument("--wait-for-endpoint", type=non_negative_float, default=0.0, metavar="SECONDS",
                   help="wait up to SECONDS for GET /v1/models to answer before starting (a server still loading)")  # fmt: skip
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", type=Path, default=None,
                   help="local folder in the dataset's schema (a TASK/ sub-folder is used when present); no network")  # fmt: skip
    g.add_argument("--dataset", default=None, help="override the Hugging Face dataset id")
    g.add_argument("--dataset-config", default=None, help="override the dataset config (docvqa: DocVQA)")
    g.add_argument("--split", default=None, help="override the split (defaults: the paper's)")
    g.add_argument("--revision", default=None, help="dataset revision (commit) to pin")
    g.add_argument(
        "--limit", type=positive_int, default=None, help="evaluate only the first N rows (after --shuffle)"
    )
    g.add_argument("--shuffle", action="store_true", help="shuffle rows with --seed before --limit")
    g.add_argument("--sample", type=int, default=None, metavar="N",
                   help="a seeded random sample of N rows (= --shuffle --limit N); from the hub only the row "
                   "groups holding them are read")  # fmt: skip
    g.add_argument("--seed", type=int, default=0, help="seed for --shuffle / --sample (default 0)")
    g = p.add_argument_group("protocol")
    g.add_argument("--prompts", default="explicit",
                   help="explicit (the paper's, default), naive, or a JSON file of templates (see docs/evaluation.md)")  # fmt: skip
    g.add_argument("--scoring", default="fixed", choices=["fixed", "mistral-compat"],
                   help="fixed: the reference harness's bugs corrected (default); mistral-compat: its numbers")  # fmt: skip
    g.add_argument(
        "--bootstrap",
        type=positive_int,
        default=1000,
        help="bootstrap resamples for the 95%% CIs (default 1000)",
    )
    g = p.add_argument_group("judge (mm_mt_bench)")
    g.add_argument(
        "--judge-model", default="gpt-4o-2024-05-13", help="judge model (default gpt-4o-2024-05-13)"
    )
    g.add_argument("--judge-endpoint", action="append", default=None, metavar="URL",
                   help="judge base URL (default https://api.openai.com/v1); repeat to load-balance")  # fmt: skip
    g.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="environment variable holding the judge API key (default OPENAI_API_KEY)")  # fmt: skip
    g.add_argument(
        "--judge-concurrency", type=positive_int, default=8, help="judge requests in flight (default 8)"
    )
    g.add_argument("--judge-attempts", type=positive_int, default=3,
                   help="judge replies per turn before it is recorded as unparseable (default 3)")  # fmt: skip
    g.add_argument(
        "--judge-max-tokens", type=positive_int, default=2048, help="judge reply length (default 2048)"
    )
    g.add_argument(
        "--judge-timeout", type=positive_float, default=300.0, help="seconds per judge request (default 300)"
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval`` (with actions run / report / compare / tasks) on the main CLI's subparsers."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model on the Pixtral paper's benchmarks",
        description="Evaluate a vision-language model with the Pixtral paper's protocol (MM-MT-Bench, MMMU, "
        "MathVista, ChartQA, DocVQA, VQAv2). `pixtral eval --task ...` is short for `pixtral eval run --task ...`.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_arguments(parser)
    actions = parser.add_subparsers(dest="eval_action", metavar="ACTION")
    run = actions.add_parser("run", help="run or resume an evaluation (the default action)", epilog=EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    _add_run_arguments(run)
    rep = actions.add_parser(
        "report", help="re-render report.md / report.html from a run folder's results.json"
    )
    rep.add_argument("run_dir", type=Path)
    cmp = actions.add_parser("compare", help="paired differences B − A with bootstrap 95%% CIs")
    cmp.add_argument("run_a", type=Path)
    cmp.add_argument("run_b", type=Path)
    cmp.add_argument("--json", action="store_true", help="print JSON instead of tables")
    cmp.add_argument(
        "--bootstrap", type=positive_int, default=1000, help="bootstrap resamples (default 1000)"
    )
    actions.add_parser("tasks", help="list the tasks, their datasets, splits and metrics")
    parser.set_defaults(handler=handle_eval)
    return parser


def _config_from_args(args: argparse.Namespace):
    if not args.task:
        raise EvalConfigError(
            "pass --task NAME (mm_mt_bench, mmmu, mathvista, chartqa, docvqa, vqav2, synthetic)"
        )
    if args.output_dir is None:
        raise EvalConfigError("pass --output-dir DIR (the run folder; re-use it to resume)")
    tasks = [t.strip() for spec in args.task for t in spec.split(",") if t.strip()]
    if args.sample is not None:
        if args.limit is not None:
            raise EvalConfigError("--sample N is --shuffle --limit N: pass one of --sample and --limit")
        args.shuffle, args.limit = True, args.sample
    return EvalConfig(
        tasks=tasks, output_dir=args.output_dir, endpoints=args.endpoint or [], model=args.model,
        api_key_env=args.api_key_env, in_process=args.in_process, engine_model=args.engine_model,
        engine_dtype=args.engine_dtype, engine_device=args.engine_device,
        engine_tensor_parallel_size=args.tensor_parallel_size, concurrency=args.concurrency,
        timeout=args.timeout, retries=args.retries, backoff=args.backoff, wait_for_endpoint=args.wait_for_endpoint, data_dir=args.data_dir,
        dataset=args.dataset, dataset_config=args.dataset_config, split=args.split, revision=args.revision,
        limit=args.limit, shuffle=args.shuffle, seed=args.seed, prompts=args.prompts, scoring=args.scoring,
        judge_model=args.judge_model, judge_endpoints=args.judge_endpoint or [DEFAULT_JUDGE_URL],
        judge_api_key_env=args.judge_api_key_env, judge_concurrency=args.judge_concurrency,
        judge_attempts=args.judge_attempts, judge_max_tokens=args.judge_max_tokens, judge_timeout=args.judge_timeout, bootstrap=args.bootstrap, progress=not args.no_progress,
    )  # fmt: skip


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _print_summary(results: dict) -> None:
    table = Table(title=f"{results['provenance']['model']} · {results['provenance']['prompt_set']} prompts · "
                        f"{results['provenance']['scoring']} scoring")  # fmt: skip
    for col in ("task", "metric", "score", "95% CI", "n", "errors"):
        table.add_column(col)
    for name, t in results["tasks"].items():
        m = t["metrics"][t["primary_metric"]]
        lo, hi = m["ci95"]
        table.add_row(
            name,
            t["primary_metric"],
            _num(m["mean"]),
            f"[{_num(lo)}, {_num(hi)}]",
            str(m["n"]),
            str(t["counts"]["errors"]),
        )
    Console(stderr=True).print(table)
    r = results["run"]["requests"]
    print(f"wrote {results['run']['output_dir']}/results.json, report.md, report.html  "
          f"(generated {r['generated']}, reused {r['reused']}, judged {r['judged']}, "
          f"judge cache hits {r['judge_cached']}, failed {r['failed']})", file=sys.stderr)  # fmt: skip


def handle_eval(args: argparse.Namespace) -> int:
    """Run the chosen action; user errors print one line and return 2."""
    try:
        action = getattr(args, "eval_action", None) or "run"
        if action == "run":
            results = run_eval(_config_from_args(args))
            _print_summary(results)
            return 1 if any(t["counts"]["errors"] for t in results["tasks"].values()) else 0
        if action == "report":
            path = args.run_dir / "results.json"
            if not path.is_file():
                raise EvalConfigError(f"{args.run_dir} has no results.json; run `pixtral eval run` first")
            render_reports(json.loads(path.read_text(encoding="utf-8")), args.run_dir)
            print(f"wrote {args.run_dir}/report.md and report.html")
            return 0
        if action == "compare":
            cmp = compare_runs(args.run_a, args.run_b, args.bootstrap)
            print(json.dumps(cmp, indent=2)) if args.json else print_comparison(cmp)
            return 0
        if action == "tasks":
            for name, cls in TASKS.items():
                t = cls()
                ds = t.dataset
                alias = [k for k, v in LMMS_EVAL_NAMES.items() if v == name and k != name]
                print(f"{name:12s} {ds.name}{'/' + ds.config if ds.config else ''} [{ds.split}]  "
                      f"metrics: {', '.join(t.metric_names(FIXED))}{'  (LLM judge)' if t.needs_judge else ''}"
                      f"{'  (lmms-eval: ' + alias[0] + ')' if alias else ''}"
                      f"{'  (mirror: ' + ', '.join(ds.mirrors) + ')' if ds.mirrors else ''}")  # fmt: skip
            return 0
        raise AssertionError(action)
    except PixtralError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: every finished answer is saved; run the same command again to resume",
            file=sys.stderr,
        )
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pixtral")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_eval_parser(subparsers)
    args = parser.parse_args(["eval", *(sys.argv[1:] if argv is None else argv)])
    return args.handler(args)
