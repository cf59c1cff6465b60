"""A decode step never reads a device tensor back to the host (on a GPU each read would stall the launch
queue). Detected on the CPU with a torch function mode that sees every conversion of a tensor to a Python
value (`int(t)`, `bool(t)`, `t.item()`, `t.tolist()`) and every op whose output shape depends on values."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from pixtral.model.kv_cache import KVPool, SequenceKVCache
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


@pytest.mark.parametrize("pooled", [False, True], ids=["own-caches", "kv-pool"])
@torch.inference_mode()
def test_a_batched_decode_forward_reads_nothing_back_to_the_host(test_model, pooled):
    caches = []
    pool = KVPool.for_model(test_model, n_slots=4, slot_len=64)
    for seed, grids in enumerate([[(2, 3)], [], [(1, 2), (2, 1)]]):
        ids, images = prompt_with_images(grids, seed=seed)
        n = ids.shape[1] + 4
        cache = pool.allocate(n) if pooled else SequenceKVCache.for_model(test_model, n)
        test_model(ids, images, caches=[cache])
        caches.append(cache)
    ids = torch.tensor([[1100], [1101], [1102]])  # (B, 1): rows at different positions
    with HostReads() as reads:
        test_model(ids, image_mask=no_images(ids), caches=caches)
    assert reads.seen == []
