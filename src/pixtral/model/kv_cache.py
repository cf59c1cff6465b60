"""Per-layer key/value buffers for incremental decoding (post-RoPE keys, as in the reference).

A plain pre-allocated cache: `batch` rows of `max_len` positions. The engine decides how many rows and how
long; the model only writes the new keys/values at `start_pos` and reads everything before them.
"""

from __future__ import annotations

import torch

from pixtral.config import TextConfig


class LayerKVCache:
    def __init__(
        self, batch: int, max_len: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype, device
    ) -> None:
        shape = (batch, max_len, n_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def update(self, start_pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, T, n_kv, hd) at [start_pos, start_pos + T); return all keys/values up to the end."""
        end = start_pos + k.shape[1]
        if end > self.k.shape[1]:
            raise ValueError(f"KV cache holds {self.k.shape[1]} positions; asked to write up to {end}")
        self.k[: k.shape[0], start_pos:end] = k
        self.v[: v.shape[0], start_pos:end] = v
        return self.k[: k.shape[0], :end], self.v[: v.shape[0], :end]


class KVCache:
    def __init__(
        self, config: TextConfig, batch: int, max_len: int, dtype: torch.dtype, device="cpu"
    ) -> None:
        self.max_len = max_len
        self.layers = [
            LayerKVCache(batch, max_len, config.n_kv_heads, config.head_dim, dtype, device)
            for _ in range(config.n_layers)
        ]

    @staticmethod
    def bytes_per_token(config: TextConfig, dtype: torch.dtype) -> int:
        return (
            2
            * config.n_layers
            * config.n_kv_heads
            * config.head_dim
            * torch.empty((), dtype=dtype).element_size()
        )
