"""Keeping the scheduler's thread the only OpenMP team of the process (issues #16, #21; docs/engine.md, "One
OpenMP team").

PyTorch's CPU kernels run their parallel regions on OpenMP (libgomp here). Each thread that starts a parallel
region keeps a team of worker threads for as long as it lives. When more threads are kept than the machine
has cores, libgomp stops spinning between regions and lets the workers sleep almost at once, so every
parallel region pays a wake-up: on 2 cores, with the main thread's team from loading the model still alive,
the scheduler's thread ran a 2048 x 2048 int8 linear in 0.62-0.64 ms against 0.32-0.36 ms with one team, and
the engine decoded 20-40% slower at batch 1 (bf16, int8) and up to 80% slower at 8 concurrent requests.
Neither OMP_WAIT_POLICY, GOMP_SPINCOUNT nor shrinking the main thread's team changes this.

So the heavy work that must happen before the scheduler's thread exists (loading, quantizing, stacking,
packing) runs in a short-lived thread, `in_fresh_thread`: its team ends with it, and the scheduler's thread
is left with the only one. Other threads (the server's, the caller's) should not run large tensor operations
while an engine decodes; `pixtral bench` runs its peers' measurements the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def in_fresh_thread(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """fn(*args, **kwargs) in a new thread that ends when it returns (its OpenMP team with it); the result is
    returned, an exception raised here."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn(*args, **kwargs))
        except BaseException as e:  # re-raised in the caller's thread
            error.append(e)

    thread = threading.Thread(target=run, name="pixtral-prepare", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
