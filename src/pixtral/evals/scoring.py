"""From stored answers and verdicts to per-item metrics and a task's aggregate (pure, deterministic)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from pixtral.evals.stats import bootstrap_ci, mt_bench_aggregates
from pixtral.evals.store import Store
from pixtral.evals.types import TaskRun

JUDGE_METRIC = "judge_rating"
CHARS_IN_ERROR = 500


def _scale(metric: str) -> float:
    return 1.0 if metric == JUDGE_METRIC else 100.0  # accuracies in percent, like the paper; ratings 1–10


def headline_metric(tr: TaskRun) -> str:
    """The task's headline; naive prompts ask for no ``Final Answer:``, so their CoT headline is ``direct``."""
    if tr.prompt_set == "naive" and "direct" in tr.task.metric_names(tr.scoring):
        return "direct"
    return tr.task.primary_metric(tr.scoring)


def score_items(tr: TaskRun, store: Store, mode: str) -> list[dict[str, Any]]:
    """One dict per item: the request (no image bytes), answer, parsed answers, metrics, status, error."""
    task = tr.task
    out = []
    for rec in tr.records:
        entry: dict[str, Any] = {
            "item_id": rec.item_id,
            "group": rec.group,
            "request": rec.request,
            "reference": rec.reference,
            "meta": rec.meta,
            "answer": None,
            "parsed": {},
            "metrics": {},
            "status": "ok",
        }
        ans = store.get_answer(rec.key)
        if ans is None:
            err = store.get_error(rec.key)
            entry["status"] = "error"
            entry["error"] = f"{err[0]}: {err[1]}"[:CHARS_IN_ERROR] if err else "not run"
            out.append(entry)
            continue
        entry["answer"] = ans.text
        entry["finish_reason"] = ans.finish_reason
        entry["usage"] = {"prompt_tokens": ans.prompt_tokens, "completion_tokens": ans.completion_tokens}
        if task.needs_judge:
            verdict = store.get_verdict(rec.judge_key) if rec.judge_key else None
            if verdict is None:
                err = store.get_error(rec.judge_key) if rec.judge_key else None
                entry["status"] = "error"
                entry["error"] = f"{err[0]}: {err[1]}"[:CHARS_IN_ERROR] if err else "not judged"
            else:
                entry["judge"] = {
                    "rating": verdict.rating,
                    "status": verdict.status,
                    "replies": verdict.replies,
                    "usage": verdict.usage,
                }
                entry["metrics"][JUDGE_METRIC] = verdict.rating if verdict.status == "ok" else None
                if verdict.status != "ok":
                    entry["status"] = "unparseable_verdict"
        else:
            scored = task.score(ans.text, rec.reference, mode)
            entry["metrics"] = scored.metrics
            entry["parsed"] = scored.parsed
        out.append(entry)
    return out


def _summary(values: list[float], groups: list[str], metric: str, n_boot: int) -> dict[str, Any]:
    mean, low, high = bootstrap_ci(values, groups, n_boot)
    k = _scale(metric)

    def r(x: float) -> float | None:
        return None if math.isnan(x) else round(x * k, 4)

    return {"mean": r(mean), "ci95": [r(low), r(high)], "n": len(values)}


def aggregate(tr: TaskRun, items: list[dict[str, Any]], mode: str, n_boot: int) -> dict[str, Any]:
    task = tr.task
    names = task.metric_names(mode)
    metrics = {}
    for m in names:
        pairs = [(e["metrics"][m], e["group"]) for e in items if e["metrics"].get(m) is not None]
        metrics[m] = _summary([v for v, _ in pairs], [g for _, g in pairs], m, n_boot)
    answered = [e for e in items if e["answer"] is not None]
    counts: dict[str, Any] = {
        "items": len(items),
        "answered": len(answered),
        "errors": sum(e["status"] == "error" for e in items),
        "truncated": sum(e.get("finish_reason") == "length" for e in answered),
    }
    counts["tokens"] = {
        k: sum((e.get("usage") or {}).get(k) or 0 for e in answered)
        for k in ("prompt_tokens", "completion_tokens")
    }
    if task.needs_judge:
        counts["unparseable_verdicts"] = sum(e["status"] == "unparseable_verdict" for e in items)
        counts["judge_tokens"] = {
            k: sum(((e.get("judge") or {}).get("usage") or {}).get(k, 0) for e in items)
            for k in ("prompt_tokens", "completion_tokens")
        }
    else:
        counts["parse_failures"] = {
            level: sum(e["parsed"].get(level) is None for e in answered)
            for level in (answered[0]["parsed"] if answered else {})
        }
    primary = headline_metric(tr)
    breakdowns: dict[str, Any] = {}
    for key in task.breakdowns:
        by_value: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for e in items:
            if e["metrics"]:
                by_value[str(e["meta"].get(key, "unknown"))].append(e)
        table = {}
        for value, group_items in sorted(by_value.items()):
            row: dict[str, Any] = {"n": len(group_items)}
            for m in names:
                vals = [e["metrics"][m] for e in group_items if e["metrics"].get(m) is not None]
                row[m] = round(sum(vals) / len(vals) * _scale(m), 4) if vals else None
            pvals = [
                (e["metrics"][primary], e["group"])
                for e in group_items
                if e["metrics"].get(primary) is not None
            ]
            row["ci95"] = _summary([v for v, _ in pvals], [g for _, g in pvals], primary, n_boot)["ci95"]
            table[value] = row
        breakdowns[key] = table
    result: dict[str, Any] = {
        "task": task.name,
        "primary_metric": primary,
        "score": metrics[primary]["mean"],
        "scale": "1-10" if primary == "judge_rating" else "percent",
        "metrics": metrics,
        "counts": counts,
        "breakdowns": breakdowns,
        "dataset": tr.dataset,
        "errors": [{"item_id": e["item_id"], "error": e["error"]} for e in items if e["status"] == "error"][
            :50
        ],
    }
    if task.needs_judge:
        triples = [
            (str(e["meta"]["category"]), int(e["meta"]["turn"]), e["metrics"]["judge_rating"])
            for e in items
            if e["metrics"].get("judge_rating") is not None
        ]
        result["mm_mt_bench"] = {k: round(v, 4) for k, v in mt_bench_aggregates(triples, mode).items()}
    return result


def score_task(
    tr: TaskRun, store: Store, mode: str, n_boot: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    items = score_items(tr, store, mode)
    return aggregate(tr, items, mode, n_boot), items
