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


# lmms-eval's names for the same benchmarks, datasets and splits, so users switching from it type what they know
LMMS_EVAL_NAMES = {
    "mmmu_val": "mmmu",
    "mathvista_testmini": "mathvista",
    "chartqa": "chartqa",
    "docvqa_val": "docvqa",
    "vqav2_val": "vqav2",
}


def get_task(name: str) -> Task:
    """A task by our name or lmms-eval's (``mmmu_val``, ``mathvista_testmini``, ``docvqa_val``, ``vqav2_val``)."""
    try:
        return TASKS[LMMS_EVAL_NAMES.get(name, name)]()
    except KeyError:
        raise EvalConfigError(
            f"unknown task {name!r}; choose from {', '.join(TASKS)} (or lmms-eval's "
            f"{', '.join(k for k in LMMS_EVAL_NAMES if k not in TASKS)})"
        ) from None


__all__ = ["LMMS_EVAL_NAMES", "TASKS", "Task", "get_task"]
