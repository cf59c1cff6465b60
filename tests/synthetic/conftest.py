from __future__ import annotations

import pytest

from pixtral.synthetic import generate


@pytest.fixture(scope="session")
def samples_256():
    """Five samples of every task (train split, seed 0, images at most 256 px a side)."""
    return list(generate("train", 55, seed=0, max_side=256))


@pytest.fixture(scope="session")
def samples_1024():
    """Three samples of every task at the full 1024 px limit (test split, seed 1)."""
    return list(generate("test", 33, seed=1, max_side=1024))


@pytest.fixture(scope="session", params=["samples_256", "samples_1024"])
def samples(request):
    return request.getfixturevalue(request.param)
