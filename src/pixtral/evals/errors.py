"""Errors a user of the evaluation harness can cause. Each message says what to fix."""

from __future__ import annotations

from pixtral.errors import PixtralError


class EvalConfigError(PixtralError):
    """Bad command-line / API options: unknown task, missing endpoint, unreadable prompt file."""


class DatasetError(PixtralError):
    """A dataset that cannot be loaded or lacks the columns a task needs."""


class BackendError(PixtralError):
    """A model or judge endpoint that failed for good (after the retry budget), or answered nonsense."""


class StoreError(PixtralError):
    """An output folder whose store is unreadable or belongs to an incompatible harness version."""
