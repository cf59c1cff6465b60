"""The six benchmarks of the Pixtral paper, and the synthetic test set of our demo model, by name."""

from __future__ import annotations

from pixtral.evals.errors import EvalConfigError
from pixtral.evals.tasks.base import Task
from pixtral.evals.tasks.chartqa import ChartQA
from pixtral.evals.tasks.docvqa import DocVQA
from pixtral.evals.tasks.mathvista import MathVista
from pixtral.evals.tasks.mm_mt_bench import MMMTBench
from pixtral.evals.tasks.mmmu import MMMU
from pixtral.evals.tasks.synthetic import SyntheticTask
from pixtral.evals.tasks.vqav2 import VQAv2

TASKS: dict[str, type[Task]] = {
    t.name: t for t in (MMMTBench, MMMU, MathVista, ChartQA, DocVQA, VQAv2, SyntheticTask)
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]()
    except KeyError:
        raise EvalConfigError(f"unknown task {name!r}; choose from {', '.join(TASKS)}") from None


__all__ = ["TASKS", "Task", "get_task"]
