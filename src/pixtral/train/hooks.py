"""Eval hooks: called every `eval_every` steps on every rank with (context, step); return numbers to log.

`evals_task_hook` exports the current weights (adapters merged) and runs one evaluation-harness task on
them in process (pixtral.evals, in-process engine backend), on rank 0; the scores go to metrics.jsonl.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pixtral.evals.config import EvalConfig
from pixtral.evals.runner import run_eval
from pixtral.train import distributed as D
from pixtral.train.checkpointing import export_model
from pixtral.train.loop import TrainContext

log = logging.getLogger("pixtral.train")


def evals_task_hook(ctx: TrainContext, step: int) -> dict[str, Any]:
    cfg = ctx.config
    folder = ctx.out_dir / "eval" / f"step_{step:08d}"
    export_model(
        ctx.root, folder / "model", ctx.model_config, ctx.info, ["native"], ctx.lora, ctx.tokenizer_dir
    )
    scores: dict[str, Any] = {}
    if ctx.info.is_main:
        eval_cfg = EvalConfig(
            tasks=[cfg.eval_task],
            output_dir=folder / "results",
            in_process=True,
            engine_model=str(folder / "model"),
            limit=cfg.eval_limit,
            data_dir=Path(cfg.eval_data_dir) if cfg.eval_data_dir else None,
            progress=False,
        )
        try:
            scores = {f"eval/{k}": v for k, v in flatten_scores(run_eval(eval_cfg)).items()}
        except Exception as e:  # an eval failure must not kill a training run
            log.warning("step %d: the eval hook failed: %s: %s", step, type(e).__name__, e)
            scores = {"eval/error": f"{type(e).__name__}: {e}"}
    return D.broadcast_object(scores)  # type: ignore[return-value]


def flatten_scores(results: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a results dict whose key names a score (score, accuracy, anls, ...)."""
    out: dict[str, float] = {}
    if isinstance(results, dict):
        for key, value in results.items():
            name = f"{prefix}/{key}" if prefix else str(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if any(w in str(key).lower() for w in ("score", "accuracy", "anls", "relaxed", "mean")):
                    out[name] = float(value)
            else:
                out.update(flatten_scores(value, name))
    elif isinstance(results, list):
        for i, value in enumerate(results):
            out.update(flatten_scores(value, f"{prefix}/{i}"))
    return out
