"""A decode step of rows that share a KV pool: one attention call per layer, the same logits as each row's
own cache (fp32, 1e-5), and no Python loop over the rows inside the model."""

from __future__ import annotations

import pytest
import torch

from pixtral.model import decoder as decoder_module
from pixtral.model.kv_cache import KVPool, PooledBatch, SequenceKVCache
from pixtral.model.pixtral import no_images
from tests.factories import prompt_with_images

GRIDS = [[(2, 3)], [], [(1, 2), (2, 1)], [(3, 3)]]  # rows of different lengths, so different positions


def prefilled(model, make_cache):
    caches = []
    for seed, grids in enumerate(GRIDS):
        ids, images = prompt_with_images(grids, seed=seed)
        cache = make_cache(ids.shape[1] + 8)
        model(ids, images, caches=[cache])
        caches.append(cache)
    return caches


@torch.inference_mode()
def test_pooled_decode_equals_each_rows_own_cache(test_model):
    pool = KVPool.for_model(test_model, n_slots=6, slot_len=64)
    own = prefilled(test_model, lambda n: SequenceKVCache.for_model(test_model, n))
    pooled = prefilled(test_model, pool.allocate)
    assert [c.slot for c in pooled] == [0, 1, 2, 3] and len({c.length for c in pooled}) == 4
    for step in range(3):
        ids = torch.tensor([[1100 + step], [1101], [1102], [1103 + step]])  # (B, 1)
        expected = test_model(ids, image_mask=no_images(ids), caches=own)
        got = test_model(ids, image_mask=no_images(ids), caches=pooled)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # rows 3 and 1, out of slot order, while slots 0 and 2 hold sequences that do not decode this step
    ids = torch.tensor([[1150], [1151]])
    expected = test_model(ids, image_mask=no_images(ids), caches=[own[3], own[1]])
    got = test_model(ids, image_mask=no_images(ids), caches=[pooled[3], pooled[1]])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    pool.release(pooled[0])  # slot 3's sequence moves to slot 0; decoding it there changes nothing
    assert pooled[3].slot == 0
    ids = torch.tensor([[1160], [1161], [1162]])
    expected = test_model(ids, image_mask=no_images(ids), caches=own[1:])
    got = test_model(ids, image_mask=no_images(ids), caches=pooled[1:])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert [c.length for c in pooled[1:]] == [c.length for c in own[1:]]


@torch.inference_mode()
def test_a_pooled_decode_step_calls_attention_once_per_layer(test_model, monkeypatch):
    pool = KVPool.for_model(test_model, n_slots=4, slot_len=64)
    caches = prefilled(test_model, pool.allocate)
    calls = []
    sdpa = decoder_module.F.scaled_dot_product_attention
    monkeypatch.setattr(
        decoder_module.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k)
    )
    ids = torch.tensor([[1100], [1101], [1102], [1103]])
    test_model(ids, image_mask=no_images(ids), caches=caches)
    assert len(calls) == test_model.config.text.n_layers  # not n_layers x 4 rows


def test_a_freed_slot_takes_the_last_sequence_so_used_slots_stay_contiguous(test_model):
    pool = KVPool.for_model(test_model, n_slots=2, slot_len=16)
    a, b = pool.allocate(16), pool.allocate(3)
    assert (a.slot, b.slot) == (0, 1) and pool.allocate(1) is None and pool.n_free == 0
    b.k[:, :3] = 7.0
    b.v[:, :3] = 8.0
    b.length = 3
    pool.release(a)
    assert (a.slot, b.slot, pool.n_used) == (-1, 0, 1)  # b moved into slot 0, its keys and values with it
    assert bool((pool.k[:, 0, :3] == 7.0).all()) and bool((pool.v[:, 0, :3] == 8.0).all())
    assert b.k.data_ptr() == pool.k[:, 0].data_ptr()
    assert pool.allocate(17) is None  # longer than a slot
    c = pool.allocate(10)
    assert c.slot == 1
    assert PooledBatch.of([b, c], 2) is None  # several new tokens: not a decode step
    c.length = 16
    with pytest.raises(ValueError, match="holds 16 positions"):
        PooledBatch.of([b, c], 1)
