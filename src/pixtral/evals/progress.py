"""Live progress bars (rich) with throughput; silent when disabled or when stderr is not a terminal."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ProgressReporter:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._progress: Any = None

    def __enter__(self) -> ProgressReporter:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("[cyan]{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def add(self, name: str, total: int | None) -> Any:
        if self._progress is None:
            return None
        return self._progress.add_task(name, total=total or 0, rate="")

    def grow(self, bar: Any) -> None:
        if self._progress is not None and bar is not None:
            t = self._progress.tasks[bar]
            self._progress.update(bar, total=(t.total or 0) + 1)

    def advance(self, bar: Any) -> None:
        if self._progress is not None and bar is not None:
            self._progress.advance(bar)
            speed = self._progress.tasks[bar].speed
            self._progress.update(bar, rate=f"{speed:.2f} items/s" if speed else "")
