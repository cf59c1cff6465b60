"""The prefix cache and the n choices share KV blocks of the paged pool instead of copying them: a hit puts
the cached block ids in the request's table, N requests with one long prefix hold it once, outputs are those
of each request alone (greedy and seeded, with and without preemption), and every reference is given back."""

from __future__ import annotations

import pytest

from pixtral.engine.image_cache import image_hash
from pixtral.engine.prefix_cache import block_keys
from pixtral.engine.sampling import SamplingParams
from pixtral.engine.scheduler import Scheduler, SchedulerConfig
from pixtral.model.kv_cache import PagedKVPool
from tests.engine.test_scheduler import EOS, alone, collect, per_token_bytes
from tests.factories import TEST_CONFIG, prompt_with_images

BS = 4  # positions per KV block


def shared_prefix_prompts(n: int):
    """n prompts of 27 tokens whose first 24 (an image among them: 6 full blocks) are the same."""
    ids, images = prompt_with_images([(3, 4)], seed=51)
    prefix = ids[0].tolist()[:-1]
    assert len(prefix) == 24
    return [(prefix + [1100 + i, 1150 + i, 4], [im.numpy() for im in images]) for i in range(n)]


def record_tables(scheduler: Scheduler, monkeypatch) -> list[list[tuple[object, list[int], int, int]]]:
    """Every forward's rows as (request, its block table, first new position, new tokens), from now on."""
    seen: list[list[tuple[object, list[int], int, int]]] = []
    forward = scheduler._forward

    def spy(rows):
        seen.append([(r, list(r.blocks), r.computed, n) for r, n in rows])
        return forward(rows)

    monkeypatch.setattr(scheduler, "_forward", spy)
    return seen


def record_copies(monkeypatch) -> list[tuple[list[int], list[int]]]:
    copies: list[tuple[list[int], list[int]]] = []
    copy = PagedKVPool.copy_blocks
    monkeypatch.setattr(
        PagedKVPool, "copy_blocks", lambda pool, s, t: copies.append((list(s), list(t))) or copy(pool, s, t)
    )
    return copies


def all_free(scheduler: Scheduler) -> bool:
    pool = scheduler._pool
    return pool.n_free == pool.n_blocks and all(pool.refs(b) == 0 for b in range(pool.n_blocks))


def test_a_hit_shares_the_cached_blocks_and_n_requests_hold_the_prefix_once(test_model, monkeypatch):
    scheduler = Scheduler(test_model, SchedulerConfig(kv_block_size=BS))
    prompts = shared_prefix_prompts(5)
    params = SamplingParams(max_tokens=6)
    ids, ims = prompts[0]
    first, _ = collect(scheduler.submit(ids, ims, params, EOS))  # fills the cache
    keys = block_keys(ids, [image_hash(im) for im in ims], TEST_CONFIG.vision, BS)
    cached = scheduler.prefix_cache.find(keys, len(ids) - 1)
    assert len(cached) == 6 and scheduler.kv_bytes_used == 0  # only the cache holds them
    steps = record_tables(scheduler, monkeypatch)
    copies = record_copies(monkeypatch)
    handles = [scheduler.submit(ids, ims, params, EOS) for ids, ims in prompts[1:]]
    results = [collect(h) for h in handles]
    for (ids, ims), (tokens, _) in zip(prompts, [(first, None), *results], strict=True):
        assert tokens == alone(test_model, ids, ims, params)
    # each request's first forward starts after the cached prefix, whose block ids head its table
    starts = {}
    for rows in steps:
        for request, table, start, _ in rows:
            starts.setdefault(request, (table, start))
    assert len(starts) == 4
    assert all(table[:6] == cached and start == 24 for table, start in starts.values())
    assert copies == [] and scheduler.prefill_tokens == 27 + 4 * 3
    # while all four run: 6 prefix blocks once + each one's own, not 4 x (6 + own)
    together = next(rows for rows in steps if len(rows) == 4)
    distinct = {b for _, table, _, _ in together for b in table}
    assert len(distinct) == 6 + sum(len(table) - 6 for _, table, _, _ in together)
    assert scheduler.kv_bytes_used == 0
    scheduler.prefix_cache.clear()
    assert all_free(scheduler)
    scheduler.close()


@pytest.mark.parametrize("pool_positions", [None, 48], ids=["roomy", "tiny-pool-preempts"])
@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "seeded-sampling"])
def test_outputs_with_the_prefix_cache_equal_each_request_alone(test_model, sampled, pool_positions):
    """Requests sharing a 24-token prefix, submitted in two waves so the second hits the cache; with a pool of
    48 positions (12 blocks) requests are preempted while they share blocks. Every output is the request's
    alone (so the same as without the cache), and every block is free once the cache is cleared."""
    prompts = shared_prefix_prompts(6)
    params = [
        SamplingParams(max_tokens=8 + i, temperature=0.8 if sampled else 0.0, seed=500 + i) for i in range(6)
    ]
    budget = {} if pool_positions is None else {"kv_budget_bytes": pool_positions * per_token_bytes()}
    scheduler = Scheduler(test_model, SchedulerConfig(kv_block_size=BS, max_num_batched_tokens=16, **budget))
    first = [
        scheduler.submit(ids, ims, p, EOS) for (ids, ims), p in zip(prompts[:2], params[:2], strict=True)
    ]
    results = [collect(h) for h in first]
    second = [
        scheduler.submit(ids, ims, p, EOS) for (ids, ims), p in zip(prompts[2:], params[2:], strict=True)
    ]
    results += [collect(h) for h in second]
    for i, ((ids, ims), p, (tokens, finished)) in enumerate(zip(prompts, params, results, strict=True)):
        assert finished.reason in ("length", "stop"), finished
        assert tokens == alone(test_model, ids, ims, p), f"request {i}"
    assert scheduler.prefix_cache.hits >= 4
    if pool_positions is not None:
        assert scheduler.preemptions > 0
    assert scheduler.kv_bytes_used == 0
    scheduler.prefix_cache.clear()
    assert all_free(scheduler)
    scheduler.close()


def test_a_full_prefix_cache_never_makes_a_request_wait_or_be_preempted(test_model):
    """A pool of 16 blocks: two prompts of different prefixes fill the cache with their blocks; a request
    that needs 14 blocks then takes them back from the cache, with no preemption."""
    positions = 16 * BS
    scheduler = Scheduler(
        test_model, SchedulerConfig(kv_block_size=BS, kv_budget_bytes=positions * per_token_bytes())
    )
    for seed in (61, 62):
        ids, images = prompt_with_images([(3, 4)], seed=seed)
        collect(
            scheduler.submit(
                ids[0].tolist(), [im.numpy() for im in images], SamplingParams(max_tokens=2), EOS
            )
        )
    assert scheduler.prefix_cache.n_blocks == 12 and scheduler._pool.n_free == 4
    ids, images = prompt_with_images([(2, 3)], seed=63)
    ids, ims = ids[0].tolist(), [im.numpy() for im in images]
    params = SamplingParams(max_tokens=positions - len(ids) - 8)  # 14 blocks in all
    tokens, finished = collect(scheduler.submit(ids, ims, params, EOS))
    assert finished.reason == "length" and tokens == alone(test_model, ids, ims, params)
    assert scheduler.preemptions == 0 and scheduler.prefix_cache.n_blocks < 12
    scheduler.prefix_cache.clear()
    assert all_free(scheduler)
    scheduler.close()


@pytest.mark.parametrize("prompt_len", [27, 28], ids=["partial-last-block", "whole-blocks"])
def test_n_choices_share_the_full_prompt_blocks_and_copy_only_the_last_partial_one(
    test_model, monkeypatch, prompt_len
):
    ids, ims = shared_prefix_prompts(1)[0]
    ids = ids[:-1] + [1180] * (prompt_len - len(ids)) + [4]
    scheduler = Scheduler(test_model, SchedulerConfig(kv_block_size=BS, prefix_cache_bytes=0))
    steps = record_tables(scheduler, monkeypatch)
    copies = record_copies(monkeypatch)
    params = [SamplingParams(max_tokens=6, temperature=0.9, seed=70 + i) for i in range(3)]
    choices = scheduler.submit_choices(ids, ims, params, EOS)
    results = [collect(c) for c in choices]
    for i, (p, (tokens, _)) in enumerate(zip(params, results, strict=True)):
        assert tokens == alone(test_model, ids, ims, p), f"choice {i}"
    full = prompt_len // BS
    tables = {}
    for rows in steps:
        for request, table, start, _ in rows:
            if start == prompt_len:  # each choice's first decode
                tables[request] = table
    leader, *followers = (tables[c] for c in choices)
    for table in followers:
        assert table[:full] == leader[:full]  # shared, not copied
        assert len(set(table[full:]) & set(leader)) == 0  # the block being written to is its own
    if prompt_len % BS:
        assert copies == [([leader[full]], [t[full]]) for t in followers]  # one block each
    else:
        assert copies == []
    assert scheduler.prefill_tokens == prompt_len and all_free(scheduler)
    scheduler.close()
