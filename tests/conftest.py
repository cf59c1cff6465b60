"""Shared fixtures. Helpers live in tests/factories.py (import them from there)."""

import pytest
import torch
from tests.factories import random_model

from pixtral.model.pixtral import Pixtral

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def test_model() -> Pixtral:
    return random_model()
