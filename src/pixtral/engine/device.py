"""Where the engine runs: `auto | cpu | cuda | cuda:N` -> a torch device, and the default dtype there.

auto is CUDA when a CUDA device is available, else the CPU. On CUDA the default dtype is bfloat16 (the 12B
weights are 25 GB in bfloat16; float32 would not fit one 80 GB card with a KV cache and is slower), on the
CPU float32 (bfloat16 matmuls are slow on CPUs without AVX512_BF16/AMX).
"""

from __future__ import annotations

import re

import torch

from pixtral.errors import InputError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' (or a torch.device) -> a torch.device that exists here."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if match is None:
        raise InputError(f"device {spec!r} is not one of {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise InputError(
            f"device {spec!r}: no CUDA device is available here (torch {torch.__version__}, "
            f"built {'with' if torch.version.cuda else 'without'} CUDA); use --device cpu or auto"
        )
    index = int(match.group(1) or torch.cuda.current_device())
    if index >= torch.cuda.device_count():
        raise InputError(f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def default_dtype(device: torch.device) -> str:
    """bfloat16 on CUDA, float32 elsewhere."""
    return "bfloat16" if device.type == "cuda" else "float32"
