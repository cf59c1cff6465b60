"""Tensor parallelism over 2 gloo ranks against one process, float32, from a native checkpoint: logits
within 1e-5 and identical greedy tokens for text, one image and three images of different sizes; the
engine's scheduler on the sharded model (KV pool, own buffers, the n choices' copied prefill) gives every
request exactly the tokens it gets in one process, prefix-cache hits (shared blocks) included."""

from __future__ import annotations

import pytest
import torch

from pixtral.checkpoint.loader import load_model, save_model
from pixtral.engine.sampling import SamplingParams
from pixtral.engine.scheduler import Scheduler, SchedulerConfig
from pixtral.model.kv_cache import SequenceKVCache
from pixtral.parallel.lockstep import TensorParallelModel
from tests.engine.test_scheduler import EOS, collect, make_requests
from tests.factories import prompt_with_images, random_model
from tests.parallel.conftest import prefill_and_decode, start_group

TOL = 1e-5  # float32: the all-reduced partial sums round differently from one matmul


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tp") / "native"
    save_model(random_model(seed=11), folder, "native")
    reference, _ = load_model(folder)
    parallel = start_group(folder, 2)
    yield reference, parallel
    parallel.close()


@pytest.mark.parametrize(
    "grids", [[], [(2, 3)], [(1, 4), (3, 2), (2, 2)]], ids=["text", "one-image", "three-images"]
)
def test_logits_and_greedy_tokens_equal_one_process(models, grids):
    reference, parallel = models
    assert isinstance(parallel, TensorParallelModel) and parallel.shard.config.text.n_kv_heads == 1
    ids, images = prompt_with_images(grids, seed=len(grids))
    want, want_tokens = prefill_and_decode(reference, ids, images)
    got, got_tokens = prefill_and_decode(parallel, ids, images)
    assert got_tokens == want_tokens
    for a, b in zip(want, got, strict=True):
        assert a.shape == b.shape and (a - b).abs().max() <= TOL


def test_a_whole_sequence_without_caches(models):
    reference, parallel = models
    ids, images = prompt_with_images([(2, 2)], seed=7)
    with torch.inference_mode():
        assert (reference(ids, images) - parallel(ids, images)).abs().max() <= TOL


def test_the_scheduler_gives_each_request_its_one_process_tokens(models):
    reference, parallel = models
    # a small paged pool (10 blocks of 8 positions on every rank: two requests fill it): steps mix decodes
    # and prefill chunks, requests are preempted and recomputed, n=2 choices start from block copies
    requests = make_requests(6)

    def run(model):
        config = SchedulerConfig(
            max_num_batched_tokens=16,
            max_num_seqs=4,
            kv_block_size=8,
            kv_budget_bytes=10 * 8 * SequenceKVCache.bytes_per_token(model.config.text, torch.float32),
            prefix_cache_bytes=0,
        )
        scheduler = Scheduler(model, config)
        handles = [
            scheduler.submit(ids, ims, SamplingParams(max_tokens=6 + i), EOS)
            for i, (ids, ims) in enumerate(requests)
        ]
        ids, ims = requests[1]
        choices = [SamplingParams(max_tokens=5, temperature=0.8, seed=3 + i) for i in range(2)]
        handles += scheduler.submit_choices(ids, ims, choices, EOS)
        out = [collect(h)[0] for h in handles]
        scheduler.close()
        return out, sum(h.preempted for h in handles)

    got, preempted = run(parallel)
    assert preempted > 0  # the pool is small enough that recomputed requests are part of the test
    assert got == run(reference)[0]


def test_a_prefix_cache_hit_gives_the_one_process_tokens(models):
    """The cached prefix's blocks are shared (the same block ids on every rank), not written in from rank 0:
    a follow-up turn and two choices of it hit the cache and get exactly the one-process tokens."""
    reference, parallel = models
    ids, ims = make_requests(2)[1]
    follow_up = ids + [1100, 1101, 4]

    def run(model):
        scheduler = Scheduler(model, SchedulerConfig(kv_block_size=8))  # the prefix cache on
        first = collect(scheduler.submit(ids, ims, SamplingParams(max_tokens=4), EOS))[0]
        choices = [SamplingParams(max_tokens=4, temperature=0.8, seed=9 + i) for i in range(2)]
        out = [first] + [collect(h)[0] for h in scheduler.submit_choices(follow_up, ims, choices, EOS)]
        hits = scheduler.prefix_cache.hits
        scheduler.close()
        return out, hits

    got, hits = run(parallel)
    assert hits >= 1
    assert got == run(reference)[0]
