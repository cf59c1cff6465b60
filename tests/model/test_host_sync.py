"""A decode step never reads a device tensor back to the host (on a GPU each read would stall the launch
queue). Detected on the CPU with a torch function mode that sees every conversion of a tensor to a Python
value (`int(t)`, `bool(t)`, `t.item()`, `t.tolist()`) and every op whose output shape depends on values."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from pixtral.model.kv_cache import PagedBatch, PagedKVPool, SequenceKVCache
from pixtral.model.pixtral import no_images
from tests.factories import prompt_with_images

HOST_READS = {"__int__", "__bool__", "__float__", "__index__", "item", "tolist", "nonzero", "masked_select"}


class HostReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in HOST_READS:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def test_the_detector_sees_a_host_read():
    with HostReads() as reads:
        int(torch.ones(2).sum())
    assert reads.seen == ["__int__"]


@torch.inference_mode()
def test_a_batched_decode_forward_reads_nothing_back_to_the_host(test_model):
    caches = []
    for seed, grids in enumerate([[(2, 3)], [], [(1, 2), (2, 1)]]):
        ids, images = prompt_with_images(grids, seed=seed)
        cache = SequenceKVCache.for_model(test_model, ids.shape[1] + 4)
        test_model(ids, images, caches=[cache])
        caches.append(cache)
    ids = torch.tensor([[1100], [1101], [1102]])  # (B, 1): rows at different positions
    with HostReads() as reads:
        test_model(ids, image_mask=no_images(ids), caches=caches)
    assert reads.seen == []


@torch.inference_mode()
def test_a_packed_decode_step_over_the_paged_pool_reads_nothing_back_to_the_host(test_model):
    pool = PagedKVPool.for_model(test_model, n_blocks=32, block_size=4)
    tables, lengths = [], []
    for seed, grids in enumerate([[(2, 3)], [], [(1, 2), (2, 1)]]):
        ids, images = prompt_with_images(grids, seed=seed)
        table: list[int] = []
        pool.grow(table, ids.shape[1] + 1)
        batch = PagedBatch.build(pool, [(table, 0, ids.shape[1])])
        test_model(ids, images, caches=batch)
        tables.append(table)
        lengths.append(ids.shape[1])
    with HostReads() as reads:  # what the scheduler does per step: build the batch, run, pick the logits
        batch = PagedBatch.build(pool, [(t, n, 1) for t, n in zip(tables, lengths, strict=True)])
        ids = torch.tensor([[1100, 1101, 1102]])  # (1, N): three rows packed
        test_model(ids, image_mask=no_images(ids), caches=batch, logits_index=torch.arange(3))
    assert reads.seen == []
