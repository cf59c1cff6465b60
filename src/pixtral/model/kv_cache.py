"""Key/value buffers for incremental decoding: one per sequence, post-RoPE keys (as in the reference).

Each sequence owns a contiguous buffer for all layers, sized by the engine (prompt + max new tokens), and
knows how many positions it holds. A batch of sequences is a list of these: rows of a batched forward may
sit at different positions, which is what continuous batching needs. Positions come from the cache:
the next token of a sequence is at `cache.length`. The buffers are made on the device and in the dtype the
caller names (`for_model`: the model's), never on a default device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pixtral.config import TextConfig


class SequenceKVCache:
    def __init__(self, config: TextConfig, max_len: int, dtype: torch.dtype, device: str | torch.device):
        shape = (config.n_layers, max_len, config.n_kv_heads, config.head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0  # positions written (and visible) so far
        self.pool: KVPool | None = None  # set when the buffers are a slot of a shared pool
        self.slot = -1

    @classmethod
    def in_pool(cls, pool: KVPool, slot: int) -> SequenceKVCache:
        """A cache whose buffers are slot `slot` of `pool` (views: writes go to the pool)."""
        cache = cls.__new__(cls)
        cache.k, cache.v = pool.k[:, slot], pool.v[:, slot]  # (n_layers, slot_len, n_kv, hd)
        cache.length, cache.pool, cache.slot = 0, pool, slot
        return cache

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


class KVPool:
    """Preallocated KV for `n_slots` sequences of up to `slot_len` positions each, in one buffer per k and v:
    (n_layers, n_slots, slot_len, n_kv, hd). The sequences in the pool always hold slots 0 .. n_used - 1
    (a freed slot takes the last sequence's keys and values), so a decode step attends over one plain view
    of the pool, `k[layer, :n_used, :n_keys]`, in one call per layer (`PooledBatch`), with no gather and no
    loop over sequences. Made on the model's device and dtype."""

    def __init__(
        self, config: TextConfig, n_slots: int, slot_len: int, dtype: torch.dtype, device: str | torch.device
    ) -> None:
        shape = (config.n_layers, n_slots, slot_len, config.n_kv_heads, config.head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.slot_len = slot_len
        self._owners: list[SequenceKVCache | None] = [None] * n_slots
        self.n_used = 0
        self.n_clean = 0  # slots 0 .. n_clean - 1 hold finite values (zeroed once, or written since)

    @classmethod
    def for_model(cls, model: torch.nn.Module, n_slots: int, slot_len: int) -> KVPool:
        return cls(model.config.text, n_slots, slot_len, model.dtype, model.device)

    @property
    def n_free(self) -> int:
        return len(self._owners) - self.n_used

    def allocate(self, max_len: int) -> SequenceKVCache | None:
        """A cache in the next slot, or None when the pool is full or max_len is over the slot length."""
        if max_len > self.slot_len or self.n_used == len(self._owners):
            return None
        self.clean_below(self.n_used + 1)
        cache = SequenceKVCache.in_pool(self, self.n_used)
        self._owners[self.n_used] = cache
        self.n_used += 1
        return cache

    def clean_below(self, n: int) -> None:
        """Zero the slots below `n` that were never zeroed. A decode step reads every position below its
        n_keys in every used slot and masks the ones a row may not see; a masked position still multiplies
        its value by a zero weight, and never-written memory may hold NaN (0 * NaN = NaN). Each slot is
        zeroed once, when first used, so memory the pool never uses is never touched."""
        if n > self.n_clean:
            self.k[:, self.n_clean : n].zero_()
            self.v[:, self.n_clean : n].zero_()
            self.n_clean = n

    def release(self, cache: SequenceKVCache) -> None:
        """Free the cache's slot; the last slot's sequence moves into it (its written positions are copied
        and its cache object re-pointed), keeping the used slots contiguous."""
        slot = cache.slot
        if cache.pool is not self or slot < 0:
            return
        last = self.n_used - 1
        if slot != last:
            moved = self._owners[last]
            n = moved.length
            self.k[:, slot, :n] = self.k[:, last, :n]
            self.v[:, slot, :n] = self.v[:, last, :n]
            moved.k, moved.v, moved.slot = self.k[:, slot], self.v[:, slot], slot
            self._owners[slot] = moved
        self._owners[last] = None
        self.n_used -= 1
        cache.slot = -1


@dataclass
class PooledBatch:
    """What every layer of one decode step needs for its one attention call, built once per forward. The
    call covers the pool's used slots 0 .. n_used - 1; a used slot that is not a row of this step (a request
    still waiting for its prefill) is computed against its first key only and its output is dropped."""

    pool: KVPool
    slots: torch.Tensor  # (B,) int64: the pool slot of each row
    positions: torch.Tensor  # (B,) int64: where each row's new key goes (= its cache length)
    n_used: int  # slots the call covers
    n_keys: int  # keys read per slot: the longest row's length + 1 (shorter rows are masked)
    mask: torch.Tensor  # (n_used, 1, 1, n_keys) bool, True = attend

    @staticmethod
    def of(caches: list[SequenceKVCache], n_new: int) -> PooledBatch | None:
        """For a decode step (one new token per row) whose caches are all slots of one pool; else None."""
        pool = caches[0].pool if caches else None
        if n_new != 1 or pool is None or any(c.pool is not pool or c.slot < 0 for c in caches):
            return None
        lengths = [c.length for c in caches]
        n_keys = max(lengths) + 1
        if n_keys > pool.slot_len:
            raise ValueError(f"KV cache holds {pool.slot_len} positions; asked to write up to {n_keys}")
        last_key = [0] * pool.n_used  # the last key each used slot sees: rows their new one, others key 0
        for c in caches:
            last_key[c.slot] = c.length
        device = pool.k.device
        positions = torch.tensor(lengths, device=device)
        slots = torch.tensor([c.slot for c in caches], device=device)
        mask = torch.arange(n_keys, device=device)[None, :] <= torch.tensor(last_key, device=device)[:, None]
        return PooledBatch(pool, slots, positions, pool.n_used, n_keys, mask[:, None, None, :])
