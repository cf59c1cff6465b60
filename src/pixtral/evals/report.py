"""Run folder outputs: ``results.json`` (aggregates + provenance), ``{task}.items.jsonl`` (per item),
``report.md`` and a self-contained ``report.html`` (tables + inline SVG bar charts, no external assets)."""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

from pixtral.evals.config import EvalConfig

LEVELS = ("exact", "flex1", "flex2", "flex3")
LEVEL_NAMES = {
    "exact": "Exact (Final Answer: only)",
    "flex1": "Flexible 1 (any answer:)",
    "flex2": "Flexible 2 (markdown stripped)",
    "flex3": "Flexible 3 (anywhere; upper bound)",
    "direct": "Direct (whole response)",
    "anywhere": "Anywhere match alone",
    "exact_match": "Exact match (whole answer)",
}


def _clean(obj: Any) -> Any:
    """NaN/inf → None so the JSON is standard."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_reports(
    cfg: EvalConfig,
    provenance: dict[str, Any],
    scored: list[tuple[dict[str, Any], list[dict[str, Any]]]],
    run_info: dict[str, Any],
) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = {}
    for result, items in scored:
        tasks[result["task"]] = result
        lines = [json.dumps(_clean(e), ensure_ascii=False, sort_keys=True) for e in items]
        _write_atomic(out / f"{result['task']}.items.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    results = _clean({"provenance": provenance, "config": cfg.to_json(), "tasks": tasks, "run": run_info})
    _write_atomic(out / "results.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    render_reports(results, out)
    return results


def render_reports(results: dict[str, Any], out: Path) -> None:
    _write_atomic(out / "report.md", to_markdown(results))
    _write_atomic(out / "report.html", to_html(results))


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.2f}"
    return str(x)


def _ci(m: dict[str, Any]) -> str:
    lo, hi = m.get("ci95") or [None, None]
    return f"{_fmt(m.get('mean'))} [{_fmt(lo)}, {_fmt(hi)}]"


def to_markdown(results: dict[str, Any]) -> str:
    p = results["provenance"]
    lines = [
        "# Evaluation report",
        "",
        f"- model: `{p.get('model')}` ({p.get('backend')}: {', '.join(p.get('endpoints') or [])})",
        f"- prompt set: `{p.get('prompt_set')}`, scoring: `{p.get('scoring')}`, harness {p.get('harness_version')}",
    ]
    if p.get("judge"):
        lines.append(f"- judge: `{p['judge']['model']}` at {', '.join(p['judge']['endpoints'])}")
    lines += ["", "| task | metric | score [95% CI] | n | errors |", "|---|---|---|---|---|"]
    for name, t in results["tasks"].items():
        m = t["metrics"][t["primary_metric"]]
        lines.append(f"| {name} | {t['primary_metric']} | {_ci(m)} | {m['n']} | {t['counts']['errors']} |")
    for name, t in results["tasks"].items():
        ds = t.get("dataset", {})
        lines += ["", f"## {name}", "", f"dataset: `{ds.get('name') or ds.get('path')}` split `{ds.get('split')}` "
                  f"revision `{ds.get('revision')}`; counts: {json.dumps(t['counts'])}", ""]  # fmt: skip
        lines += ["| metric | score [95% CI] | n |", "|---|---|---|"]
        for metric, m in t["metrics"].items():
            label = LEVEL_NAMES.get(metric, metric)
            lines.append(f"| {label} | {_ci(m)} | {m['n']} |")
        if "mm_mt_bench" in t:
            lines += ["", "| MM-MT-Bench summary | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in t["mm_mt_bench"].items()]
        for key, table in t.get("breakdowns", {}).items():
            metrics = [m for m in t["metrics"]]
            lines += ["", f"### by {key}", "", "| " + key + " | n | " + " | ".join(metrics) + " | 95% CI |"]
            lines.append("|---" * (len(metrics) + 3) + "|")
            for value, row in table.items():
                cells = " | ".join(_fmt(row.get(m)) for m in metrics)
                lines.append(
                    f"| {value} | {row['n']} | {cells} | {_fmt(row['ci95'][0])}–{_fmt(row['ci95'][1])} |"
                )
        if t.get("errors"):
            lines += ["", "### errors", ""] + [f"- `{e['item_id']}`: {e['error']}" for e in t["errors"]]
    return "\n".join(lines) + "\n"


def _svg_bars(title: str, bars: list[tuple[str, float | None]], vmax: float) -> str:
    width, bar_h, gap, label_w = 640, 22, 6, 220
    height = 30 + len(bars) * (bar_h + gap)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<text x="0" y="16" font-weight="bold">{html.escape(title)}</text>']  # fmt: skip
    for i, (label, value) in enumerate(bars):
        y = 28 + i * (bar_h + gap)
        w = 0 if value is None or vmax <= 0 else (width - label_w - 60) * max(0.0, value) / vmax
        parts.append(f'<text x="0" y="{y + 15}" font-size="12">{html.escape(label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="#4f7cac"/>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 15}" font-size="12">{_fmt(value)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(results: dict[str, Any]) -> str:
    p = results["provenance"]
    body = [
        "<h1>Evaluation report</h1>",
        f"<p>model <code>{html.escape(str(p.get('model')))}</code>, prompt set <code>{html.escape(str(p.get('prompt_set')))}</code>, "
        f"scoring <code>{html.escape(str(p.get('scoring')))}</code>, harness {html.escape(str(p.get('harness_version')))}</p>",
        _table(
            ["task", "metric", "score", "95% CI", "n", "errors"],
            [[n, t["primary_metric"], t["metrics"][t["primary_metric"]]["mean"],
              " – ".join(_fmt(x) for x in t["metrics"][t["primary_metric"]]["ci95"]),
              t["metrics"][t["primary_metric"]]["n"], t["counts"]["errors"]] for n, t in results["tasks"].items()],
        ),
    ]  # fmt: skip
    for name, t in results["tasks"].items():
        scale_max = 10.0 if t["scale"] == "1-10" else 100.0
        body.append(f"<h2>{html.escape(name)}</h2>")
        body.append(
            _table(["metric", "score", "95% CI", "n"],
                   [[LEVEL_NAMES.get(k, k), m["mean"], " – ".join(_fmt(x) for x in m["ci95"]), m["n"]]
                    for k, m in t["metrics"].items()])
        )  # fmt: skip
        levels = [(LEVEL_NAMES[k], t["metrics"][k]["mean"]) for k in LEVELS if k in t["metrics"]]
        if levels:
            body.append(_svg_bars("Score by parsing level", levels, scale_max))
        if "mm_mt_bench" in t:
            body.append(_table(["summary", "value"], [[k, v] for k, v in t["mm_mt_bench"].items()]))
        primary = t["primary_metric"]
        for key, table in t.get("breakdowns", {}).items():
            body.append(f"<h3>by {html.escape(key)}</h3>")
            body.append(
                _svg_bars(
                    f"{primary} by {key}", [(v, row.get(primary)) for v, row in table.items()], scale_max
                )
            )
            metrics = list(t["metrics"])
            body.append(
                _table(
                    [key, "n", *metrics],
                    [[v, row["n"], *[row.get(m) for m in metrics]] for v, row in table.items()],
                )
            )
        if t.get("errors"):
            body.append("<h3>errors</h3><ul>" + "".join(
                f"<li><code>{html.escape(e['item_id'])}</code>: {html.escape(e['error'])}</li>" for e in t["errors"]) + "</ul>")  # fmt: skip
    style = ("body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}")  # fmt: skip
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>pixtral eval report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")  # fmt: skip
