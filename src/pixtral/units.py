"""Sizes for people: one format for every message that names a byte count (binary units, KiB = 1024 B, as
memory is counted), so a KV-cache budget and a dataset download read alike."""

from __future__ import annotations

_UNITS = ("KiB", "MiB", "GiB", "TiB")


def format_bytes(n_bytes: int) -> str:
    """512 -> '512 B', 1536 -> '1.5 KiB', 3 * 2**30 -> '3.0 GiB' (TiB is the largest unit)."""
    if abs(n_bytes) < 1024:
        return f"{n_bytes} B"
    size = float(n_bytes)
    for unit in _UNITS:
        size /= 1024
        if abs(size) < 1024 or unit == _UNITS[-1]:
            break
    return f"{size:.1f} {unit}"
