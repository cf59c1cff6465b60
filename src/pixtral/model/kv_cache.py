"""Key/value buffers for incremental decoding: one per sequence, post-RoPE keys (as in the reference).

Each sequence owns a contiguous buffer for all layers, sized by the engine (prompt + max new tokens), and
knows how many positions it holds. A batch of sequences is a list of these: rows of a batched forward may
sit at different positions, which is what continuous batching needs. Positions come from the cache:
the next token of a sequence is at `cache.length`. The buffers are made on the device and in the dtype the
caller names (`for_model`: the model's), never on a default device.
"""

from __future__ import annotations

import torch

from pixtral.config import TextConfig


class SequenceKVCache:
    def __init__(self, config: TextConfig, max_len: int, dtype: torch.dtype, device: str | torch.device):
        shape = (config.n_layers, max_len, config.n_kv_heads, config.head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0  # positions written (and visible) so far

    @classmethod
    def for_model(cls, model: torch.nn.Module, max_len: int) -> SequenceKVCache:
        """A cache on the model's device, in its dtype (`model.config.text`, `.dtype`, `.device`)."""
        return cls(model.config.text, max_len, model.dtype, model.device)

    @property
    def max_len(self) -> int:
        return self.k.shape[1]

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    @staticmethod
    def bytes_per_token(config: TextConfig, dtype: torch.dtype) -> int:
        return 2 * config.n_layers * config.n_kv_heads * config.head_dim * dtype.itemsize

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (T, n_kv, hd) at [length, length + T) of `layer`; return keys/values (length + T, ...).
        `length` itself advances once all layers are written (advance())."""
        end = self.length + k.shape[0]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked to write up to {end}")
        self.k[layer, self.length : end] = k
        self.v[layer, self.length : end] = v
        return self.k[layer, :end], self.v[layer, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def copy_prefix_from(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Start from a cached prefix: k, v of shape (n_layers, n, n_kv, hd)."""
        n = k.shape[1]
        self.k[:, :n] = k
        self.v[:, :n] = v
        self.length = n
