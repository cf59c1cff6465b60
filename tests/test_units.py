"""The one byte formatter (pixtral/units.py) that every size message uses."""

from __future__ import annotations

import pytest

from pixtral.evals.dataset_files import human_bytes
from pixtral.units import format_bytes


@pytest.mark.parametrize(
    ("n_bytes", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (20 * 1024 * 1024, "20.0 MiB"),
        (3 * 2**30, "3.0 GiB"),
        (1024**4 * 5, "5.0 TiB"),
        (1024**5, "1024.0 TiB"),  # no unit above TiB
    ],
)
def test_sizes_use_binary_units(n_bytes, text):
    assert format_bytes(n_bytes) == text


def test_the_dataset_listing_uses_the_same_format():
    assert human_bytes(1536) == format_bytes(1536) == "1.5 KiB"
    assert human_bytes(None) == "size unknown"
