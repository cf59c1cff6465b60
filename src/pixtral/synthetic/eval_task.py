"""Moved: the synthetic evaluation task lives with the other tasks, in ``pixtral.evals.tasks.synthetic``.
This name stays importable while code that uses it is updated."""

from pixtral.evals.tasks.synthetic import SyntheticTask, exact_match, normalise_answer


def register() -> None:
    """No-op: ``synthetic`` is listed in ``pixtral.evals.tasks.TASKS``."""


__all__ = ["SyntheticTask", "exact_match", "normalise_answer", "register"]
