"""Tensor-parallel inference: one model over several processes, GPUs or machines (docs/tensor-parallel.md)."""
