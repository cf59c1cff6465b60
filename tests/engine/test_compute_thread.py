"""in_fresh_thread (engine/compute_thread.py): the work runs on another thread that is gone afterwards, its
result comes back and its exception is raised in the caller (Engine.load's errors must reach the user)."""

import threading

import pytest

from pixtral.engine.compute_thread import in_fresh_thread
from pixtral.errors import InputError


def test_runs_elsewhere_returns_and_the_thread_ends():
    seen = []

    def work(a, b=0):
        seen.append(threading.current_thread())
        return a + b

    assert in_fresh_thread(work, 2, b=3) == 5
    assert seen[0] is not threading.current_thread() and not seen[0].is_alive()


def test_the_exception_reaches_the_caller():
    def fail():
        raise InputError("model.safetensors: no such tensor 'output.weight'")

    with pytest.raises(InputError, match="output.weight"):
        in_fresh_thread(fail)
