"""Importing pixtral puts PyTorch's large CPU allocations on transparent huge pages (pixtral/__init__.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
PROBE = """
import os, pixtral, torch
x = torch.ones(64 * 2**20 // 4)  # 64 MB
huge = [int(l.split()[1]) for l in open('/proc/self/smaps_rollup') if l.startswith('AnonHugePages')]
print(os.environ['THP_MEM_ALLOC_ENABLE'], huge[0] if huge else -1)
"""


def _probe(**env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    setting, huge_kb = out.stdout.split()
    return setting, int(huge_kb)


def test_pixtral_turns_huge_pages_on_by_default_and_keeps_a_users_choice():
    assert _probe()[0] == "1"
    assert _probe(THP_MEM_ALLOC_ENABLE="0")[0] == "0"


@pytest.mark.skipif(
    not THP.exists() or "[never]" in THP.read_text() or not Path("/proc/self/smaps_rollup").exists(),
    reason="no transparent huge pages on this kernel",
)
def test_a_large_tensor_lands_on_huge_pages():
    setting, huge_kb = _probe()
    assert setting == "1"
    assert huge_kb >= 32 * 1024, huge_kb  # at least half of the 64 MB tensor
