"""Key/value buffers for incremental decoding: one per sequence, post-RoPE keys (as in the reference).

Two layouts:
- `SequenceKVCache`: a sequence owns a contiguous buffer for all layers (prompt + max new tokens) and knows
  how many positions it holds; a batch is a list of these, attended row by row. The reference loop
  (engine/generate.py) and training-side callers use it.
- `PagedKVPool` + `PagedBatch`: the engine's layout. One preallocated pool of fixed-size blocks shared by
  all sequences, a block table per sequence, and a step that packs the new tokens of many sequences (decodes
  and prefill chunks) into one forward (docs/engine.md, "Token-budget steps over a paged KV pool").
The buffers are made on the device and in the dtype the caller names (`for_model`: the model's), never on a
default device.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

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


class PagedKVPool:
    """Preallocated KV in blocks of `block_size` positions, shared by every sequence of the engine: one buffer
    per k and v of shape (n_layers, n_blocks, block_size, n_kv, hd). A sequence holds a list of blocks (its
    block table), handed out one at a time as it grows, so memory is charged as it fills. Made on the model's
    device and in its dtype.

    Blocks are reference-counted: a block can be in several tables (the full blocks of a shared prompt prefix,
    `share`) and held by the prefix cache (`cache_block`); `release` drops a table's references and a block
    is free when none is left. A block whose only reference is the prefix cache's is *evictable*: `grow`
    takes it (least recently released first, `on_evict(block)` told) when no block is free, so cached
    prefixes never stand in the way of a sequence (`n_available` counts free + evictable). Whatever holds a
    block shared with another holder only reads it: new keys/values always go to a block that one table
    holds alone (docs/engine.md, "The prefix cache")."""

    def __init__(
        self,
        config: TextConfig,
        n_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: str | torch.device,
    ) -> None:
        shape = (config.n_layers, n_blocks, block_size, config.n_kv_heads, config.head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.block_size = block_size
        self.n_blocks = n_blocks
        self._free = list(range(n_blocks - 1, -1, -1))  # a stack: the lowest ids first
        self._refs = [0] * n_blocks  # tables holding the block, + 1 while the prefix cache holds it
        self._cached: set[int] = set()  # blocks the prefix cache holds
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached, no table: least recent first
        self.on_evict: Callable[[int], None] | None = None  # told of each cached block `grow` takes back
        # When a list: every block copy made outside a forward (the only write into the pool outside one) is
        # logged there as (source blocks, target blocks), for a tensor-parallel group to replay on its ranks.
        self.outside_copies: list[tuple[list[int], list[int]]] | None = None

    @classmethod
    def for_model(cls, model: torch.nn.Module, n_blocks: int, block_size: int) -> PagedKVPool:
        return cls(model.config.text, n_blocks, block_size, model.dtype, model.device)

    @staticmethod
    def bytes_per_block(config: TextConfig, dtype: torch.dtype, block_size: int) -> int:
        return block_size * SequenceKVCache.bytes_per_token(config, dtype)

    @property
    def n_free(self) -> int:
        """Blocks nothing holds."""
        return len(self._free)

    @property
    def n_available(self) -> int:
        """Blocks a sequence can get now: the free ones and those only the prefix cache holds."""
        return len(self._free) + len(self._evictable)

    @property
    def n_cached(self) -> int:
        return len(self._cached)

    def refs(self, block: int) -> int:
        return self._refs[block]

    def blocks_for(self, n_positions: int) -> int:
        return -(-n_positions // self.block_size)

    def grow(self, blocks: list[int], n_positions: int) -> bool:
        """Append blocks to the table `blocks` until it holds n_positions; False (nothing taken) when the
        pool has too few available blocks. Evictable cached blocks are taken once no block is free."""
        need = self.blocks_for(n_positions) - len(blocks)
        if need > self.n_available:
            return False
        if need > 0:
            self.evict(need - len(self._free))
            new = [self._free.pop() for _ in range(need)]
            for block in new:
                self._refs[block] = 1
            self.zero_blocks(new)
            blocks += new
        return True

    def share(self, blocks: list[int], shared: list[int]) -> None:
        """Append `shared` (blocks another table or the prefix cache holds) to the table: no copy, one more
        reference each. They are read only from then on."""
        for block in shared:
            if self._refs[block] == 0:
                raise ValueError(f"KV block {block} is free: only a held block can be shared")
            self._refs[block] += 1
            self._evictable.pop(block, None)
        blocks += shared

    def zero_blocks(self, blocks: list[int]) -> None:
        """Zero blocks as they are handed out: attention reads a block's positions past a sequence's length
        (masked), and garbage there could be NaN, which a mask does not cancel (NaN * 0 = NaN)."""
        index = torch.tensor(blocks, device=self.k.device)
        self.k.index_fill_(1, index, 0.0)
        self.v.index_fill_(1, index, 0.0)

    def reserve(self) -> int:
        """Take one block out of circulation for good (a scratch block for padding rows) and return it."""
        block = self._free.pop(0)  # the highest free id
        self._refs[block] = 1
        self.zero_blocks([block])
        return block

    def release(self, blocks: list[int]) -> None:
        """Drop the table's references (the table is emptied), the last block first: a block no one holds
        is free; one only the prefix cache holds becomes evictable (a prefix's tail before its head)."""
        for block in reversed(blocks):
            self._unref(block)
        blocks.clear()

    def _unref(self, block: int) -> None:
        self._refs[block] -= 1
        if self._refs[block] == 0:
            self._free.append(block)
        elif self._refs[block] == 1 and block in self._cached:
            self._evictable[block] = None

    def cache_block(self, block: int) -> None:
        """The prefix cache takes a reference to a (full, written) block a table holds."""
        if self._refs[block] == 0 or block in self._cached:
            raise ValueError(f"KV block {block}: only a held block that is not cached yet can be cached")
        self._cached.add(block)
        self._refs[block] += 1

    def uncache_block(self, block: int) -> None:
        """The prefix cache drops its reference."""
        self._cached.remove(block)
        self._evictable.pop(block, None)
        self._unref(block)

    def evict(self, n: int) -> int:
        """Take back up to n evictable blocks, least recently released first (each told to `on_evict`);
        returns how many."""
        done = 0
        while done < n and self._evictable:
            block = next(iter(self._evictable))
            self.uncache_block(block)
            if self.on_evict is not None:
                self.on_evict(block)
            done += 1
        return done

    def slots(self, blocks: list[int], start: int, end: int) -> list[int]:
        """Flat slot indices (block * block_size + offset) of positions start .. end - 1 of a sequence."""
        bs = self.block_size
        return [blocks[p // bs] * bs + p % bs for p in range(start, end)]

    def copy_blocks(self, source: list[int], target: list[int]) -> None:
        """Copy whole blocks source[i] -> target[i] (the partly written last block of a prompt, for another
        choice of it: copy on write)."""
        if self.outside_copies is not None:
            self.outside_copies.append((list(source), list(target)))
        src = torch.tensor(source, device=self.k.device)
        dst = torch.tensor(target, device=self.k.device)
        self.k[:, dst] = self.k[:, src]
        self.v[:, dst] = self.v[:, src]


@dataclass
class Segment:
    """A run of several new tokens of one sequence inside a packed step (a prefill chunk)."""

    start: int  # first index in the packed step
    end: int
    key_slots: torch.Tensor | None  # (S,) flat slots of all its keys so far; None: starts at position 0
    mask: torch.Tensor | None  # (T, S) bool causal mask, True = attend; None from position 0 (is_causal)


@dataclass
class PagedBatch:
    """One step over the paged pool, every row's new tokens packed into one sequence of N tokens: first
    `n_single` rows of one new token each (decodes, and prefill chunks of one token), then the segments of
    several tokens. Built once per forward from host-side lengths and block tables (no host sync); every
    layer writes the N new keys/values with one indexed store, attends the single-token rows in one call over
    their gathered blocks, and each segment in one call."""

    pool: PagedKVPool
    # what it was built from (block table, first position, count), the scheduler's own tables: read within the
    # step only (tensor parallelism sends them with the forward), so they are not copied
    rows: list[tuple[list[int], int, int]]
    positions: torch.Tensor  # (1, N) int64
    slots: torch.Tensor  # (N,) int64: the flat pool slot each new key/value goes to
    n_single: int
    single_blocks: torch.Tensor | None  # (n_single, max_blocks) int64 block tables (padded, masked)
    single_mask: torch.Tensor | None  # (n_single, 1, 1, max_blocks * block_size) bool, True = attend
    segments: list[Segment]

    @staticmethod
    def build(pool: PagedKVPool, rows: list[tuple[list[int], int, int]]) -> PagedBatch:
        """rows: (block table, first new position, number of new tokens), the one-token rows first; every
        table already holds its new positions."""
        device = pool.k.device
        bs = pool.block_size
        positions: list[int] = []
        slots: list[int] = []
        single = [r for r in rows if r[2] == 1]
        n_single = len(single)
        if any(r[2] == 1 for r in rows[n_single:]):
            raise ValueError("PagedBatch rows: the one-token rows must come first")
        single_blocks = single_mask = None
        if single:
            width = max(pool.blocks_for(start + 1) for _, start, _ in single)
            tables = [
                (blocks[: pool.blocks_for(start + 1)] + [0] * width)[:width] for blocks, start, _ in single
            ]
            single_blocks = torch.tensor(tables, device=device)
            last = torch.tensor([start for _, start, _ in single], device=device)
            single_mask = (torch.arange(width * bs, device=device)[None, :] <= last[:, None])[
                :, None, None, :
            ]
        segments = []
        for blocks, start, n in rows:
            first = len(positions)
            positions += range(start, start + n)
            slots += pool.slots(blocks, start, start + n)
            if n > 1:
                key_slots = (
                    None if start == 0 else torch.tensor(pool.slots(blocks, 0, start + n), device=device)
                )
                mask = None if start == 0 else causal_mask(n, start + n, device)  # None: SDPA's is_causal
                segments.append(Segment(first, first + n, key_slots, mask))
        return PagedBatch(
            pool,
            rows,
            torch.tensor([positions], device=device),
            torch.tensor(slots, device=device),
            n_single,
            single_blocks,
            single_mask,
            segments,
        )


def _padded(table: list[int], width: int) -> list[int]:
    return table + [table[-1]] * (width - len(table))


def causal_mask(n_queries: int, n_keys: int, device: torch.device) -> torch.Tensor | None:
    """Bottom-right aligned causal mask (True = attend): query i sees keys up to n_keys - n_queries + i.
    None when every query may see every key (a single decode step)."""
    if n_queries == 1:
        return None
    offset = n_keys - n_queries
    q = torch.arange(n_queries, device=device)[:, None]
    k = torch.arange(n_keys, device=device)[None, :]
    return k <= q + offset  # (T, S)
