"""``pixtral eval compare RUN_A RUN_B``: paired differences (B − A) on the items both runs scored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pixtral.evals.errors import EvalConfigError
from pixtral.evals.scoring import _scale
from pixtral.evals.stats import paired_difference


def _load(run: Path) -> tuple[dict[str, Any], dict[str, dict[str, dict[str, Any]]]]:
    path = run / "results.json"
    if not path.is_file():
        raise EvalConfigError(f"{run} has no results.json; pass a folder written by `pixtral eval run`")
    results = json.loads(path.read_text(encoding="utf-8"))
    items: dict[str, dict[str, dict[str, Any]]] = {}
    for task in results["tasks"]:
        f = run / f"{task}.items.jsonl"
        if f.is_file():
            items[task] = {
                e["item_id"]: e for e in map(json.loads, f.read_text(encoding="utf-8").splitlines()) if e
            }
    return results, items


def compare_runs(run_a: Path, run_b: Path, n_boot: int = 1000) -> dict[str, Any]:
    """Per task and metric: A's and B's means on the shared items, the mean difference and its 95% CI."""
    res_a, items_a = _load(run_a)
    res_b, items_b = _load(run_b)
    shared = [t for t in res_a["tasks"] if t in res_b["tasks"]]
    if not shared:
        raise EvalConfigError(f"{run_a} and {run_b} have no task in common")
    out: dict[str, Any] = {}
    for task in shared:
        rows = {}
        for metric in res_a["tasks"][task]["metrics"]:
            a_vals, b_vals, groups = [], [], []
            for item_id, ea in items_a.get(task, {}).items():
                eb = items_b.get(task, {}).get(item_id)
                if eb is None:
                    continue
                va, vb = ea["metrics"].get(metric), eb["metrics"].get(metric)
                if va is None or vb is None:
                    continue
                a_vals.append(va)
                b_vals.append(vb)
                groups.append(ea.get("group") or item_id)
            if not a_vals:
                continue
            k = _scale(metric)
            d = paired_difference(a_vals, b_vals, groups, n_boot)
            rows[metric] = {
                "a": round(sum(a_vals) / len(a_vals) * k, 4),
                "b": round(sum(b_vals) / len(b_vals) * k, 4),
                "diff": round(d["diff"] * k, 4),
                "ci95": [round(d["low"] * k, 4), round(d["high"] * k, 4)],
                "p_b_le_a": round(d["p_le_0"], 4),
                "n": d["n"],
            }
        out[task] = rows
    return {"a": str(run_a), "b": str(run_b), "tasks": out}


def print_comparison(cmp: dict[str, Any]) -> None:
    console = Console()
    for task, rows in cmp["tasks"].items():
        table = Table(title=f"{task}: B − A  (A={cmp['a']}, B={cmp['b']})")
        for col in ("metric", "A", "B", "B − A", "95% CI", "P(B ≤ A)", "n"):
            table.add_column(col)
        for metric, r in rows.items():
            significant = r["ci95"][0] > 0 or r["ci95"][1] < 0
            diff = f"[bold]{r['diff']:+.2f}[/bold]" if significant else f"{r['diff']:+.2f}"
            table.add_row(metric, f"{r['a']:.2f}", f"{r['b']:.2f}", diff,
                          f"[{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}]", f"{r['p_b_le_a']:.3f}", str(r["n"]))  # fmt: skip
        console.print(table)
