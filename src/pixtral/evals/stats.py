"""Means with clustered bootstrap 95% confidence intervals, breakdowns, and paired differences."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from pixtral.evals.metrics import COMPAT


def _group_arrays(values: Sequence[float], groups: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for v, g in zip(values, groups, strict=True):
        sums[g] += v
        counts[g] += 1
    keys = list(sums)
    return np.array([sums[k] for k in keys], dtype=np.float64), np.array(
        [counts[k] for k in keys], dtype=np.float64
    )


def bootstrap_ci(
    values: Sequence[float], groups: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the 2.5th/97.5th percentiles of the mean over ``n_boot`` resamples of the groups.

    Resampling whole groups (clusters, e.g. the turns of one conversation) keeps correlated items together.
    """
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    groups = groups if groups is not None else [str(i) for i in range(len(values))]
    sums, counts = _group_arrays(values, groups)
    mean = float(sums.sum() / counts.sum())
    if n_boot <= 0 or len(sums) < 2:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    n = len(sums)
    chunk = max(1, 4_000_000 // n)
    means = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        means.append(sums[idx].sum(axis=1) / counts[idx].sum(axis=1))
    allm = np.concatenate(means)
    low, high = np.percentile(allm, [2.5, 97.5])
    return mean, float(low), float(high)


def paired_difference(
    a: Sequence[float], b: Sequence[float], groups: Sequence[str], n_boot: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Mean of b − a over paired items, its clustered bootstrap CI, and the share of resamples with b ≤ a."""
    diff = [y - x for x, y in zip(a, b, strict=True)]
    mean, low, high = bootstrap_ci(diff, groups, n_boot, seed)
    if not diff:
        return {"diff": mean, "low": low, "high": high, "p_le_0": float("nan"), "n": 0}
    sums, counts = _group_arrays(diff, groups)
    rng = np.random.default_rng(seed + 1)
    n = len(sums)
    idx = rng.integers(0, n, size=(max(1, n_boot), n))
    boots = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    return {"diff": mean, "low": low, "high": high, "p_le_0": float(np.mean(boots <= 0)), "n": len(diff)}


def mt_bench_aggregates(ratings: Sequence[tuple[str, int, float]], mode: str) -> dict[str, float]:
    """MM-MT-Bench summaries from (category, 1-based turn, rating) triples, unparseable verdicts already removed.

    ``category_macro_average`` averages category means only. mistral-evals' ``macro_average_score`` averages
    the category means *and* the turn means together (bug B3); ``macro_average`` is that in compat mode and
    the category macro in fixed mode.
    """
    by_cat: dict[str, list[float]] = defaultdict(list)
    by_turn: dict[int, list[float]] = defaultdict(list)
    for cat, turn, r in ratings:
        by_cat[cat].append(r)
        by_turn[turn].append(r)
    cat_means = {c: float(np.mean(v)) for c, v in sorted(by_cat.items())}
    turn_means = {t: float(np.mean(v)) for t, v in sorted(by_turn.items())}
    out: dict[str, float] = {
        "micro_average": float(np.mean([r for _, _, r in ratings])) if ratings else float("nan"),
        "category_macro_average": float(np.mean(list(cat_means.values()))) if cat_means else float("nan"),
        "mistral_macro_average": (
            float(np.mean(list(cat_means.values()) + list(turn_means.values())))
            if cat_means
            else float("nan")
        ),
    }
    out["macro_average"] = out["mistral_macro_average"] if mode == COMPAT else out["category_macro_average"]
    for c, m in cat_means.items():
        out[f"category/{c}"] = m
    for t, m in turn_means.items():
        out[f"turn/{t}"] = m
    return out
