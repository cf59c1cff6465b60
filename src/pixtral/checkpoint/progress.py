"""Progress bars for checkpoint work that takes seconds: building and writing (`pixtral init`), converting,
loading, quantizing while loading.

A bar counts bytes (or, with no total, pulses while a step runs) on stderr through rich, whose own thread
keeps the spinner and the elapsed time moving inside a long step. It appears only after `delay` seconds, so
quick operations print nothing, and never when stderr is not a terminal or PIXTRAL_NO_PROGRESS is set.
This module knows nothing of tensors or formats: callers say what they do and advance by bytes.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

NO_PROGRESS_ENV = "PIXTRAL_NO_PROGRESS"


def progress_enabled() -> bool:
    """Bars are shown when stderr is a terminal and PIXTRAL_NO_PROGRESS is unset (or empty, or 0)."""
    return sys.stderr.isatty() and os.environ.get(NO_PROGRESS_ENV, "0") in ("", "0")


class ByteProgress:
    """`with ByteProgress("writing", total_bytes) as bar: ... bar.advance(n)`; total None: a pulsing bar."""

    def __init__(
        self,
        description: str,
        total_bytes: int | None = None,
        delay: float = 2.0,
        enabled: bool | None = None,
    ) -> None:
        self.description, self.total, self.delay = description, total_bytes, delay
        self.enabled = progress_enabled() if enabled is None else enabled
        self.completed = 0
        self._rich: Any = None
        self._task: Any = None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._closed = False

    def __enter__(self) -> ByteProgress:
        if self.enabled:
            self._rich, self._task = _rich_bar(self.description, self.total)
            self._timer = threading.Timer(self.delay, self._show)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
            if self._rich is not None and self._rich.live.is_started:
                self._rich.stop()

    def advance(self, n_bytes: int) -> None:
        self.completed += n_bytes
        if self._rich is not None:
            self._rich.advance(self._task, n_bytes)

    def _show(self) -> None:
        with self._lock:
            if not self._closed:
                self._rich.start()


def track(items: Iterable[T], description: str, sizes: Iterable[int], total_bytes: int) -> Iterator[T]:
    """Yield `items`, advancing a ByteProgress by the matching size once the caller is done with each."""
    with ByteProgress(description, total_bytes) as bar:
        for item, size in zip(items, sizes, strict=True):
            yield item
            bar.advance(size)


def _rich_bar(description: str, total: int | None) -> tuple[Any, Any]:
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
    if total is not None:
        columns += [DownloadColumn(), TimeRemainingColumn()]
    # no stdout/stderr redirection: the bar may start from the delay timer's thread, and swapping the
    # process's sys.stdout from there would race with whatever the main thread prints
    bar = Progress(*columns, TimeElapsedColumn(), console=Console(stderr=True), redirect_stdout=False,
                   redirect_stderr=False)  # fmt: skip
    return bar, bar.add_task(description, total=total)
