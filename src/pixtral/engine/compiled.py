"""The compiled decode step: `torch.compile` of the model's forward for steps whose rows are all one-token rows
(decodes) over the paged KV pool (docs/engine.md, "The compiled decode step").

On CUDA the mode is "reduce-overhead" (CUDA graphs: one launch for the whole step instead of thousands); the
step's batch is padded to a bucket (powers of two up to 8, then multiples of 8) so a handful of graphs cover
every batch size, the padding rows writing to a scratch block and their outputs dropped. On the CPU the mode
is inductor's default, also over the buckets (fewer recompilations). Off by default on the CPU, where it did
not win (measured in docs/engine.md); `--compile` turns it on.
"""

from __future__ import annotations

import torch

from pixtral.model.kv_cache import PagedBatch
from pixtral.model.pixtral import Pixtral


def bucket(n: int) -> int:
    """The padded batch size of n rows: 1, 2, 4, 8, then multiples of 8."""
    if n <= 8:
        return 1 << (n - 1).bit_length()
    return -(-n // 8) * 8


class CompiledDecode:
    """Callable as (token_ids (1, B), batch, logits_index (B,)) -> logits (1, B, vocab), like the model's forward
    for a decode step; compiled per bucket of B on first use."""

    def __init__(self, model: Pixtral, scratch_block: int) -> None:
        self.model = model
        self.scratch = scratch_block  # a pool block no sequence holds: padding rows write there
        self.calls = 0
        mode = "reduce-overhead" if model.device.type == "cuda" else None
        self._step = torch.compile(self._forward, mode=mode, dynamic=False, fullgraph=False)

    def _forward(
        self,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        tables: torch.Tensor,
        mask: torch.Tensor,
        pool_k: torch.Tensor,
        pool_v: torch.Tensor,
    ) -> torch.Tensor:
        pool = _PoolView(pool_k, pool_v)
        batch = PagedBatch(pool, [], positions, slots, token_ids.shape[1], tables, mask, [])
        mask_ids = torch.zeros_like(token_ids, dtype=torch.bool)
        return self.model(token_ids, image_mask=mask_ids, caches=batch)

    def __call__(
        self, token_ids: torch.Tensor, batch: PagedBatch, logits_index: torch.Tensor
    ) -> torch.Tensor:
        self.calls += 1
        n = token_ids.shape[1]
        pool = batch.pool
        ids, positions, slots = token_ids, batch.positions, batch.slots
        tables, mask = batch.single_blocks, batch.single_mask  # (n, W), (n, 1, 1, W * block_size)
        width = tables.shape[1]
        wide = max(4, 1 << (width - 1).bit_length())  # the table width, padded to a power of two
        if wide > width:  # more blocks per row: the scratch block, masked
            tables = torch.cat([tables, tables.new_full((n, wide - width), self.scratch)], dim=1)
            mask = torch.cat([mask, mask.new_zeros(n, 1, 1, (wide - width) * pool.block_size)], dim=3)
        extra = bucket(n) - n
        if extra:  # padding rows: token 0 at position 0, written to the scratch block, outputs dropped
            ids = torch.cat([ids, ids.new_zeros(1, extra)], dim=1)
            positions = torch.cat([positions, positions.new_zeros(1, extra)], dim=1)
            slots = torch.cat([slots, slots.new_full((extra,), self.scratch * pool.block_size)])
            tables = torch.cat([tables, tables.new_full((extra, wide), self.scratch)])
            pad_mask = mask.new_zeros(extra, *mask.shape[1:])
            pad_mask[..., 0] = True  # attends to one key
            mask = torch.cat([mask, pad_mask])
        logits = self._step(ids, positions, slots, tables, mask, pool.k, pool.v)  # (1, padded, vocab)
        return logits[:, logits_index]


class _PoolView:
    """What the attention reads of a pool: its buffers and block size (a plain object inside the graph)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k, self.v = k, v
        self.block_size = k.shape[2]


def compiled_decode(model: Pixtral, scratch_block: int) -> CompiledDecode:
    return CompiledDecode(model, scratch_block)
