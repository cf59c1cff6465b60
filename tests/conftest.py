"""Shared fixtures. Helpers live in tests/factories.py (import them from there)."""

import pytest
import torch

from pixtral.model.pixtral import Pixtral
from tests.factories import random_model

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def test_model() -> Pixtral:
    return random_model()
