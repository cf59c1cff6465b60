"""Fixtures for the prompt tests."""

from __future__ import annotations

import pytest

from pixtral.prompt.tokenizer import load_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    """The packaged Pixtral tokenizer (tekken_240911.json), loaded once."""
    return load_tokenizer(None)
