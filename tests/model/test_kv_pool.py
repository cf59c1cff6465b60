"""A packed step over the paged KV pool (model/kv_cache.py): many sequences' new tokens in one forward, the
one-token rows attending in one call per layer over their gathered blocks, and the same logits as each
sequence's own contiguous cache (fp32, 1e-5)."""

from __future__ import annotations

import pytest
import torch

from pixtral.model import decoder as decoder_module
from pixtral.model.kv_cache import PagedBatch, PagedKVPool, SequenceKVCache
from pixtral.model.pixtral import no_images
from tests.factories import TEST_CONFIG, prompt_with_images

GRIDS = [[(2, 3)], [], [(1, 2), (2, 1)], [(3, 3)]]  # rows of different lengths, so different positions
IMG = TEST_CONFIG.vision.image_token_id


def prompts():
    return [prompt_with_images(grids, seed=seed) for seed, grids in enumerate(GRIDS)]


def paged_forward(model, pool, tables, rows, features=None):
    """rows: (table index, token ids, first position); the one-token rows first. -> logits (1, N, vocab)."""
    for t, ids, start in rows:
        assert pool.grow(tables[t], start + len(ids))
    batch = PagedBatch.build(pool, [(tables[t], start, len(ids)) for t, ids, start in rows])
    flat = [i for _, ids, _ in rows for i in ids]
    token_ids = torch.tensor([flat])
    is_image = [i == IMG and start == 0 for _, ids, start in rows for i in ids]  # prompts start at 0 here
    return model(token_ids, image_features=features, image_mask=torch.tensor([is_image]), caches=batch)


@torch.inference_mode()
def test_packed_prefills_and_decodes_equal_each_rows_own_cache(test_model):
    pool = PagedKVPool.for_model(test_model, n_blocks=64, block_size=4)
    pool.k.fill_(float("nan"))  # what uninitialised memory may hold: masked positions must never read it
    pool.v.fill_(float("nan"))
    tables: list[list[int]] = [[] for _ in GRIDS]
    own = []
    expected_prefill = []
    for ids, images in prompts():
        cache = SequenceKVCache.for_model(test_model, ids.shape[1] + 8)
        expected_prefill.append(test_model(ids, images, caches=[cache]))
        own.append(cache)
    # all four prompts prefilled in one packed forward (their image features in packed order)
    feats = torch.cat([test_model.encode_images(images) for _, images in prompts() if images])
    got = paged_forward(
        test_model, pool, tables, [(i, ids[0].tolist(), 0) for i, (ids, _) in enumerate(prompts())], feats
    )
    starts = torch.tensor([0] + [ids.shape[1] for ids, _ in prompts()]).cumsum(0)
    for i, expected in enumerate(expected_prefill):
        torch.testing.assert_close(got[:, starts[i] : starts[i + 1]], expected, rtol=0, atol=1e-5)
    lengths = [c.length for c in own]
    for step in range(3):  # decodes of all four rows in one call
        new = [1100 + step, 1101, 1102, 1103 + step]
        ids = torch.tensor([[t] for t in new])
        expected = test_model(ids, image_mask=no_images(ids), caches=own)  # (4, 1, vocab)
        got = paged_forward(test_model, pool, tables, [(i, [t], lengths[i]) for i, t in enumerate(new)])
        torch.testing.assert_close(got[0], expected[:, 0], rtol=0, atol=1e-5)
        lengths = [n + 1 for n in lengths]
    # two decodes beside a 3-token chunk continuing row 2 (not from position 0): one forward
    chunk = [1150, 1151, 1152]
    e_dec = test_model(
        torch.tensor([[1160], [1161]]), image_mask=no_images(torch.ones(2, 1)), caches=[own[3], own[1]]
    )
    e_chunk = test_model(torch.tensor([chunk]), image_mask=no_images(torch.ones(1, 3)), caches=[own[2]])
    got = paged_forward(
        test_model, pool, tables, [(3, [1160], lengths[3]), (1, [1161], lengths[1]), (2, chunk, lengths[2])]
    )
    torch.testing.assert_close(got[0, :2], e_dec[:, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(got[:, 2:], e_chunk, rtol=0, atol=1e-5)


@torch.inference_mode()
def test_one_token_rows_attend_in_one_call_per_layer(test_model, monkeypatch):
    pool = PagedKVPool.for_model(test_model, n_blocks=64, block_size=4)
    tables: list[list[int]] = [[] for _ in GRIDS]
    lengths = []
    for i, (ids, images) in enumerate(prompts()):
        feats = test_model.encode_images(images) if images else None
        paged_forward(test_model, pool, tables, [(i, ids[0].tolist(), 0)], feats)
        lengths.append(ids.shape[1])
    calls = []
    sdpa = decoder_module.F.scaled_dot_product_attention
    monkeypatch.setattr(
        decoder_module.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k)
    )
    paged_forward(test_model, pool, tables, [(i, [1100 + i], n) for i, n in enumerate(lengths)])
    assert len(calls) == test_model.config.text.n_layers  # not n_layers x 4 rows


def test_blocks_are_taken_as_sequences_grow_and_given_back():
    pool = PagedKVPool(TEST_CONFIG.text, n_blocks=4, block_size=4, dtype=torch.float32, device="cpu")
    a: list[int] = []
    assert pool.grow(a, 5) and len(a) == 2 and pool.n_free == 2
    assert pool.grow(a, 8) and len(a) == 2  # still inside its second block
    b: list[int] = []
    assert not pool.grow(b, 9) and b == [] and pool.n_free == 2  # 3 blocks asked, 2 free: nothing taken
    assert pool.grow(b, 8)
    assert pool.slots(a, 3, 6) == [a[0] * 4 + 3, a[1] * 4, a[1] * 4 + 1]
    pool.k[:, a] = torch.randn(pool.k[:, a].shape)
    pool.copy_blocks(a, b)
    assert torch.equal(pool.k[:, b], pool.k[:, a]) and torch.equal(pool.v[:, b], pool.v[:, a])
    pool.release(a)
    assert a == [] and pool.n_free == 2


def test_shared_and_cached_blocks_are_reference_counted():
    pool = PagedKVPool(TEST_CONFIG.text, n_blocks=4, block_size=4, dtype=torch.float32, device="cpu")
    evicted: list[int] = []
    pool.on_evict = evicted.append
    a: list[int] = []
    assert pool.grow(a, 12)  # 3 blocks
    prefix = a[:2]
    for block in prefix:  # the prefix cache keeps the two full blocks
        pool.cache_block(block)
    b: list[int] = []
    pool.share(b, prefix)  # another sequence starts from them: no copy
    assert b == prefix and [pool.refs(x) for x in prefix] == [3, 3]
    pool.release(a)
    assert pool.n_free == 2 and [pool.refs(x) for x in prefix] == [2, 2]  # a's own last block is free
    pool.release(b)  # only the cache holds the prefix now: evictable, counted as available
    assert (pool.n_free, pool.n_available, pool.n_cached) == (2, 4, 2) and evicted == []
    c: list[int] = []
    assert pool.grow(c, 12)  # needs one evictable block: the prefix's tail goes first, its head stays
    assert evicted == [prefix[1]] and pool.n_cached == 1 and pool.refs(prefix[0]) == 1
    assert prefix[1] in c and pool.refs(prefix[1]) == 1  # handed out again, to c alone
    pool.release(c)
    with pytest.raises(ValueError, match="free"):
        pool.share([], [prefix[1]])  # only a held block can be shared
    pool.uncache_block(prefix[0])  # the cache is cleared: every block is free, every count zero
    assert pool.n_free == 4 and all(pool.refs(x) == 0 for x in range(4))
