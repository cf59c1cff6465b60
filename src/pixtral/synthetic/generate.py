"""Samples by (split, seed, index): the one entry point to the task generators."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from pixtral.synthetic.core import MAX_SIDE, MIN_MAX_SIDE, Sample, check_split, sample_rng
from pixtral.synthetic.tasks import TASKS


def resolve_tasks(tasks: Sequence[str] | None) -> list[str]:
    """Task names in a fixed order; ``None`` means every fine and coarse task. Also accepts the groups
    ``fine`` / ``coarse`` / ``warmup`` (big-shape curriculum tasks, never part of the default)."""
    if not tasks:
        return [t for t, spec in TASKS.items() if spec.granularity in ("fine", "coarse")]
    out: list[str] = []
    for name in tasks:
        if name in ("fine", "coarse", "warmup"):
            out += [t for t, spec in TASKS.items() if spec.granularity == name and t not in out]
        elif name in TASKS:
            if name not in out:
                out.append(name)
        else:
            raise ValueError(
                f"unknown synthetic task {name!r}; choose from {', '.join(TASKS)}, fine, coarse, warmup"
            )
    return out


def make_sample(
    split: str, index: int, *, seed: int = 0, max_side: int = MAX_SIDE, tasks: Sequence[str] | None = None
) -> Sample:
    """Sample ``index`` of ``split``: task ``tasks[index % len(tasks)]`` drawn from its own seeded stream."""
    check_split(split)
    if not MIN_MAX_SIDE <= max_side <= MAX_SIDE:
        raise ValueError(f"max_side must be in [{MIN_MAX_SIDE}, {MAX_SIDE}], got {max_side}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    names = resolve_tasks(tasks)
    spec = TASKS[names[index % len(names)]]
    rng = sample_rng(split, seed, index, spec.name)
    drawn = spec.fn(rng, split, max_side)
    return Sample(
        id=f"{split}-{seed}-{index:07d}",
        split=split,
        task=spec.name,
        granularity=spec.granularity,
        messages=drawn.messages,
        answer=drawn.answer,
        images=drawn.images,
        meta={**drawn.meta, "seed": seed, "index": index, "max_side": max_side},
    )


def generate(
    split: str,
    n: int,
    *,
    seed: int = 0,
    max_side: int = MAX_SIDE,
    tasks: Sequence[str] | None = None,
    start: int = 0,
) -> Iterator[Sample]:
    """Samples ``start .. start + n - 1`` of ``split`` (tasks round-robin, so every task gets n/len(tasks))."""
    names = resolve_tasks(tasks)
    for index in range(start, start + n):
        yield make_sample(split, index, seed=seed, max_side=max_side, tasks=names)
