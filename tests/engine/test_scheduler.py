"""Continuous batching: every request gets exactly the tokens it gets alone; caches hit without changing outputs."""

from __future__ import annotations

import time

import pytest
import torch

from pixtral.engine import scheduler as scheduler_module
from pixtral.engine.generate import decode_steps
from pixtral.engine.prefix_cache import block_keys
from pixtral.engine.sampling import SamplingParams, sample_batch
from pixtral.engine.scheduler import Finished, Scheduler, SchedulerConfig
from pixtral.errors import InputError
from tests.factories import TEST_CONFIG, image_block, prompt_with_images, random_model

EOS = frozenset({TEST_CONFIG.eos_id})
IMG = TEST_CONFIG.vision.image_token_id


def alone(model, ids, images, params) -> list[int]:
    """The reference: one request, the plain decoding loop, no batching, no caches."""
    steps = decode_steps(model, ids, [torch.as_tensor(i) for i in images], params, stop_ids=EOS)
    return [s.token_id for s in steps if s.token_id not in EOS]


def collect(request, timeout: float = 60.0) -> tuple[list[int], Finished]:
    tokens = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        item = request.events.get(timeout=timeout)
        if isinstance(item, Finished):
            return tokens, item
        tokens.append(item)
    raise TimeoutError


def make_requests(n: int, seed0: int = 0):
    shapes = [[], [(2, 3)], [(1, 4), (3, 1)], [(2, 2)], [], [(4, 2)], [(1, 1)], [(3, 3)]]
    out = []
    for i in range(n):
        ids, images = prompt_with_images(shapes[i % len(shapes)], seed=seed0 + i)
        out.append((ids[0].tolist(), [im.numpy() for im in images]))
    return out


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "seeded-sampling"])
def test_batched_and_continuously_batched_requests_equal_each_request_alone(test_model, sampled):
    scheduler = Scheduler(test_model, SchedulerConfig(max_num_batched_tokens=16))
    requests = make_requests(7)

    def params(i):
        return SamplingParams(max_tokens=10 + i, temperature=0.9 if sampled else 0.0, seed=100 + i)

    handles = [scheduler.submit(ids, ims, params(i), EOS) for i, (ids, ims) in enumerate(requests[:4])]
    collect_first = collect(handles[0])  # the first finishes while others run, then more join mid-flight
    handles += [scheduler.submit(ids, ims, params(4 + i), EOS) for i, (ids, ims) in enumerate(requests[4:])]
    results = [collect_first] + [collect(h) for h in handles[1:]]
    for i, ((ids, ims), (tokens, finished)) in enumerate(zip(requests, results, strict=True)):
        assert tokens == alone(test_model, ids, ims, params(i)), f"request {i}"
        assert finished.reason in ("length", "stop")
    assert scheduler.kv_bytes_used == 0 and scheduler.n_running == 0


def test_rows_really_share_decode_steps(test_model):
    scheduler = Scheduler(test_model)
    handles = [
        scheduler.submit(ids, ims, SamplingParams(max_tokens=20), EOS) for ids, ims in make_requests(4)
    ]
    for h in handles:
        collect(h)
    # 4 requests x 20 tokens one at a time would take >= 80 steps; batched, ~20 decode steps plus prefills.
    assert scheduler.steps < 40


def test_image_cache_hits_and_does_not_change_outputs(test_model):
    scheduler = Scheduler(test_model)
    ids, images = prompt_with_images([(2, 3)], seed=21)
    ids, images = ids[0].tolist(), [im.numpy() for im in images]
    params = SamplingParams(max_tokens=8)
    first, _ = collect(scheduler.submit(ids, images, params, EOS))
    second, _ = collect(scheduler.submit(ids, images, params, EOS))
    assert (scheduler.image_cache.misses, scheduler.image_cache.hits) == (1, 1)
    assert first == second == alone(test_model, ids, images, params)


def test_prefix_cache_reuses_a_previous_turn(test_model):
    scheduler = Scheduler(test_model, SchedulerConfig(kv_block_size=8))
    ids, images = prompt_with_images([(3, 4)], seed=31)
    ids, images = ids[0].tolist(), [im.numpy() for im in images]
    params = SamplingParams(max_tokens=6)
    answer, _ = collect(scheduler.submit(ids, images, params, EOS))
    follow_up = ids + answer + [TEST_CONFIG.eos_id, 3, 1050, 1060, 1070, 4]  # next user turn
    got, _ = collect(scheduler.submit(follow_up, images, params, EOS))
    assert scheduler.prefix_cache.hits == 1 and scheduler.prefix_cache.tokens_reused >= 8 * (
        (len(ids) - 1) // 8
    )
    assert got == alone(test_model, follow_up, images, params)


def test_identical_placeholders_with_different_images_never_share_kv(test_model):
    scheduler = Scheduler(test_model, SchedulerConfig(kv_block_size=8))
    _, images = prompt_with_images([(3, 4)], seed=41)
    ids = [1, 3, *range(1100, 1110), *image_block(3, 4), 1111, 1112, 4]  # block 0 is text only
    a = [im.numpy() for im in images]
    b = [(im + 1.0).numpy() for im in images]
    keys_a = block_keys(ids, ["hash-a"], TEST_CONFIG.vision, 8)
    keys_b = block_keys(ids, ["hash-b"], TEST_CONFIG.vision, 8)
    assert keys_a[0] == keys_b[0]  # the text-only first block is shared
    assert all(ka != kb for ka, kb in zip(keys_a[1:], keys_b[1:], strict=True))  # every block after is not
    params = SamplingParams(max_tokens=6)
    out_a, _ = collect(scheduler.submit(ids, a, params, EOS))
    out_b, _ = collect(scheduler.submit(ids, b, params, EOS))
    assert scheduler.prefix_cache.tokens_reused == 8  # only the text-only block was reused
    assert out_a == alone(test_model, ids, a, params)
    assert out_b == alone(test_model, ids, b, params)


def test_kv_budget_rejects_what_can_never_fit_and_queues_what_cannot_fit_now(test_model):
    per_token = 2 * TEST_CONFIG.text.n_layers * TEST_CONFIG.text.n_kv_heads * TEST_CONFIG.text.head_dim * 4
    (ids, ims), (ids2, ims2) = make_requests(2)
    budget = per_token * 60  # each fits alone (7 + 40, 18 + 30 tokens), not both together
    scheduler = Scheduler(test_model, SchedulerConfig(kv_budget_bytes=budget))
    with pytest.raises(InputError, match="iB of KV cache.*budget"):
        scheduler.submit(ids, ims, SamplingParams(max_tokens=1000), EOS)
    first = scheduler.submit(ids, ims, SamplingParams(max_tokens=40), EOS)
    second = scheduler.submit(ids2, ims2, SamplingParams(max_tokens=30), EOS)
    tokens, _ = collect(first)
    assert len(tokens) <= 40
    tokens2, finished2 = collect(second)  # waited for the first to free its memory, then ran
    assert tokens2 == alone(test_model, ids2, ims2, SamplingParams(max_tokens=30))
    assert scheduler.kv_bytes_used == 0


def test_cancellation_frees_memory(test_model):
    scheduler = Scheduler(test_model)
    ((ids, ims),) = make_requests(1)
    request = scheduler.submit(ids, ims, SamplingParams(max_tokens=10_000), EOS)
    request.events.get(timeout=30)  # running
    assert scheduler.kv_bytes_used > 0
    request.cancel()
    _, finished = collect(request)
    assert finished.reason == "cancelled"
    assert scheduler.kv_bytes_used == 0 and scheduler.n_running == 0


def test_a_failing_request_reports_its_error(test_model):
    scheduler = Scheduler(test_model)
    ids, _ = prompt_with_images([(2, 2)], seed=1)
    request = scheduler.submit(
        ids[0].tolist(), [], SamplingParams(max_tokens=3), EOS
    )  # [IMG] tokens, no image
    _, finished = collect(request)
    assert finished.reason == "error" and "[IMG] tokens" in str(finished.error)
    ok, _ = collect(scheduler.submit([1, 3, 1100, 4], [], SamplingParams(max_tokens=3), EOS))
    assert len(ok) == 3  # the scheduler is still serving


def img_prone_model():
    """A random model whose [IMG] logit follows the mean final hidden state: it samples [IMG] often."""
    model = random_model()
    states = []
    hook = model.norm.register_forward_hook(lambda _m, _i, out: states.append(out.reshape(-1, out.shape[-1])))
    with torch.no_grad():
        for seed in range(4):
            model(*prompt_with_images([(1, 2)], seed=seed))
        hook.remove()
        mean = torch.cat(states).mean(0)  # (dim,)
        model.output.weight[IMG] = 2 * mean / mean.norm() * model.output.weight.norm(dim=1).mean()
    return model


def test_a_sampled_img_token_is_a_plain_token_and_its_batch_goes_on():
    model = img_prone_model()
    scheduler = Scheduler(model)
    requests = make_requests(8)
    params = [SamplingParams(max_tokens=12, temperature=1.0, seed=i) for i in range(8)]
    handles = [scheduler.submit(ids, ims, p, EOS) for (ids, ims), p in zip(requests, params, strict=True)]
    results = [collect(h) for h in handles]
    assert all(finished.reason in ("length", "stop") for _, finished in results), results
    assert any(IMG in tokens for tokens, _ in results)  # the case under test happened
    for i, ((ids, ims), p) in enumerate(zip(requests, params, strict=True)):
        assert results[i][0] == alone(model, ids, ims, p), f"request {i}"


POISON = 5  # the index of the request that fails


@pytest.mark.parametrize("where", ["forward", "sampling"])
def test_a_request_that_fails_in_its_step_fails_alone_and_15_others_finish(test_model, monkeypatch, where):
    requests = make_requests(16)
    params = [SamplingParams(max_tokens=8 + i, temperature=0.8, seed=100 + i) for i in range(16)]
    params[POISON] = SamplingParams(max_tokens=100, temperature=0.8, seed=666)
    expected = [alone(test_model, ids, ims, p) for (ids, ims), p in zip(requests, params, strict=True)]
    submitted = []  # the handles, once submitted: the poisoned request is recognised by its cache

    def faulty_forward(ids, *args, caches=None, **kwargs):  # raises in the poisoned request's decode steps
        poisoned = submitted[0][POISON] if submitted else None
        if poisoned is not None and poisoned.generated > 0:  # a step holding one of its KV slots
            size = caches.pool.block_size
            if any(slot // size in poisoned.blocks for slot in caches.slots.tolist()):
                raise RuntimeError("injected fault in the forward")
        return forward(ids, *args, caches=caches, **kwargs)

    poisoned_draws = []

    def faulty_sample_batch(logits, rows, generators):  # raises from the poisoned request's third token on
        if any(p.seed == params[POISON].seed for p in rows):
            poisoned_draws.append(len(poisoned_draws))
            if len(poisoned_draws) >= 3:
                raise RuntimeError("injected fault in sampling")
        return sample_batch(logits, rows, generators)

    forward = test_model.forward
    if where == "forward":
        monkeypatch.setattr(test_model, "forward", faulty_forward)
    else:
        monkeypatch.setattr(scheduler_module, "sample_batch", faulty_sample_batch)
    scheduler = Scheduler(test_model)
    handles = [scheduler.submit(ids, ims, p, EOS) for (ids, ims), p in zip(requests, params, strict=True)]
    submitted.append(handles)
    results = [collect(h) for h in handles]
    _, poisoned = results[POISON]
    assert poisoned.reason == "error" and "injected fault" in str(poisoned.error)
    for i, (tokens, finished) in enumerate(results):
        if i != POISON:
            assert finished.reason in ("length", "stop") and tokens == expected[i], f"request {i}"
    assert scheduler.kv_bytes_used == 0 and scheduler.n_running == 0


def budget_steps(scheduler: Scheduler, monkeypatch) -> list[tuple[int, int]]:
    """The (decode rows, prefill tokens) of every step the scheduler runs from now on."""
    steps: list[tuple[int, int]] = []
    run = scheduler._run

    def spy(rows):
        run(rows)
        steps.append(scheduler.last_step)

    monkeypatch.setattr(scheduler, "_run", spy)
    return steps


def test_token_budget_steps_mix_decodes_and_prefill_chunks(test_model, monkeypatch):
    """A budget of 12 tokens per step: while some requests decode, the prompts of others are prefilled in
    chunks in the same forward, and no step carries more than 12 new tokens; outputs are unchanged."""
    requests = make_requests(6)
    params = [SamplingParams(max_tokens=8 + i, temperature=0.6 * (i % 2), seed=200 + i) for i in range(6)]
    scheduler = Scheduler(test_model, SchedulerConfig(max_num_batched_tokens=12))
    steps = budget_steps(scheduler, monkeypatch)
    handles = [scheduler.submit(ids, ims, p, EOS) for (ids, ims), p in zip(requests, params, strict=True)]
    for h, (ids, ims), p in zip(handles, requests, params, strict=True):
        tokens, finished = collect(h)
        assert finished.reason in ("length", "stop") and tokens == alone(test_model, ids, ims, p)
    assert all(d + f <= 12 for d, f in steps), steps
    assert any(d > 0 and f > 0 for d, f in steps), steps  # decodes and prefill chunks in one forward
    assert max(d for d, _ in steps) >= 4  # several decodes in one step
    assert scheduler.kv_bytes_used == 0 and scheduler.n_running == 0


def test_a_prefill_chunk_that_samples_nothing_computes_no_logits(test_model, monkeypatch):
    ((ids, ims),) = make_requests(2)[1:]  # 18 tokens with an image: chunks of 5, 5, 5, 3
    scheduler = Scheduler(test_model, SchedulerConfig(max_num_batched_tokens=5))
    heads = []
    output = test_model.output.forward
    monkeypatch.setattr(test_model.output, "forward", lambda h: heads.append(h.shape[1]) or output(h))
    tokens, _ = collect(scheduler.submit(ids, ims, SamplingParams(max_tokens=3), EOS))
    assert tokens == alone(test_model, ids, ims, SamplingParams(max_tokens=3))
    assert heads[: len(ids) // 5] == [0] * (len(ids) // 5) and all(n == 1 for n in heads[len(ids) // 5 :])


def per_token_bytes() -> int:
    t = TEST_CONFIG.text
    return 2 * t.n_layers * t.n_kv_heads * t.head_dim * 4


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "seeded-sampling"])
def test_preemption_under_a_tiny_kv_budget_changes_no_output(test_model, sampled):
    """A pool of 64 positions (blocks of 4) for 6 requests of up to ~45 positions each: decodes run out of
    blocks, the latest admitted requests are preempted (recomputed later), and every output is unchanged."""
    requests = make_requests(6)
    params = [
        SamplingParams(max_tokens=14 + 3 * i, temperature=0.8 if sampled else 0.0, seed=400 + i, top_k=20 * i)
        for i in range(6)
    ]
    config = SchedulerConfig(
        kv_budget_bytes=64 * per_token_bytes(), kv_block_size=4, max_num_batched_tokens=16
    )
    scheduler = Scheduler(test_model, config)
    handles = [scheduler.submit(ids, ims, p, EOS) for (ids, ims), p in zip(requests, params, strict=True)]
    for i, (h, (ids, ims), p) in enumerate(zip(handles, requests, params, strict=True)):
        tokens, finished = collect(h)
        assert finished.reason in ("length", "stop"), finished
        assert tokens == alone(test_model, ids, ims, p), f"request {i}"
    assert scheduler.preemptions > 0 and any(h.preempted for h in handles)
    assert scheduler.kv_bytes_used == 0 and scheduler._pool.n_free == scheduler._pool.n_blocks


def test_a_request_whose_start_fails_gives_its_kv_blocks_back(test_model):
    scheduler = Scheduler(test_model, SchedulerConfig(max_num_seqs=2))
    ids, images = make_requests(2)[1]
    bad = [images[0][:, :5]]  # 5 pixels high: not a multiple of the patch size, refused by the vision encoder
    for _ in range(3):  # more failures than slots
        _, finished = collect(scheduler.submit(ids, bad, SamplingParams(max_tokens=3), EOS))
        assert finished.reason == "error"
    assert scheduler.kv_bytes_used == 0 and scheduler.n_running == 0
    tokens, _ = collect(scheduler.submit(ids, images, SamplingParams(max_tokens=3), EOS))
    assert tokens == alone(test_model, ids, images, SamplingParams(max_tokens=3))


def test_scheduler_flags_become_the_config_and_bad_values_name_the_flag(test_model, capsys):
    import argparse

    from pixtral.scheduler_options import add_scheduler_options, scheduler_config

    p = argparse.ArgumentParser()
    add_scheduler_options(p)
    args = p.parse_args(["--kv-cache-memory", "0.5", "--max-num-seqs", "3", "--max-num-batched-tokens", "64"])
    config = scheduler_config(args)
    assert (config.kv_budget_bytes, config.max_num_seqs, config.max_num_batched_tokens) == (2**29, 3, 64)
    assert config.compile is None and config.kv_memory_fraction is None
    assert scheduler_config(p.parse_args(["--kv-cache-memory", "90%"])).kv_memory_fraction == 0.9
    for bad in (["--kv-cache-memory", "0"], ["--kv-cache-memory", "150%"], ["--max-num-seqs", "0"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)
        assert bad[0] in capsys.readouterr().err
    if test_model.device.type == "cpu":
        with pytest.raises(InputError, match="kv-cache-memory 90%.*CUDA"):
            Scheduler(test_model, scheduler_config(p.parse_args(["--kv-cache-memory", "90%"])))


def test_a_prefill_and_a_decode_that_overfill_a_tiny_pool_both_finish(test_model):
    """A pool of 40 positions (blocks of 4) for prompts of 22 and 12 tokens + 6 new each, chunks of 12: the
    second is admitted while the first decodes, the pool runs out, one is preempted, both finish unchanged
    (and no two requests holding parts of the pool wait for each other: Scheduler._preempt_later)."""
    requests = make_requests(8)[5:7]  # (4, 2) and (1, 1) images
    params = SamplingParams(max_tokens=6)
    config = SchedulerConfig(
        kv_budget_bytes=40 * per_token_bytes(), kv_block_size=4, max_num_batched_tokens=12
    )
    scheduler = Scheduler(test_model, config)
    handles = [scheduler.submit(ids, ims, params, EOS) for ids, ims in requests]
    for h, (ids, ims) in zip(handles, requests, strict=True):
        tokens, finished = collect(h, timeout=30)
        assert finished.reason in ("length", "stop") and tokens == alone(test_model, ids, ims, params)
    assert scheduler.preemptions >= 1 and scheduler.kv_bytes_used == 0


def mixed_params(i: int, sampled: bool) -> SamplingParams:
    """Request i's settings: temperatures, top-k, top-p, min-p, penalties, logit bias and logprobs vary."""
    if not sampled:
        extra = [{}, {"repetition_penalty": 1.3}, {"logit_bias": {1100 + i: 2.0}}, {"logprobs": 2}][i % 4]
        return SamplingParams(max_tokens=5 + i, **extra)
    extra = [
        {"top_k": 5},
        {"top_p": 0.8},
        {"min_p": 0.05},
        {"frequency_penalty": 0.5, "presence_penalty": 0.3},
        {"top_k": 50, "top_p": 0.9, "logprobs": 3},
        {},
    ][i % 6]
    return SamplingParams(max_tokens=5 + i, temperature=0.5 + 0.1 * (i % 5), seed=1000 + i, **extra)


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "seeded-sampling"])
def test_16_concurrent_mixed_requests_each_equal_the_request_alone(test_model, monkeypatch, sampled):
    """16 requests of different lengths, image counts (0-2) and sampling settings, submitted at once, run in
    token-budget steps that mix decodes and prefill chunks (batched sampling): each gets its tokens (and
    logprobs) alone."""
    requests = make_requests(16)
    params = [mixed_params(i, sampled) for i in range(16)]
    scheduler = Scheduler(test_model, SchedulerConfig(max_num_batched_tokens=24))
    steps = budget_steps(scheduler, monkeypatch)
    handles = [scheduler.submit(ids, ims, p, EOS) for (ids, ims), p in zip(requests, params, strict=True)]
    for i, (h, (ids, ims), p) in enumerate(zip(handles, requests, params, strict=True)):
        tokens, finished = collect(h)
        assert finished.reason in ("length", "stop"), finished
        stop = p.stop_ids(TEST_CONFIG.eos_id)
        reference = list(decode_steps(test_model, ids, [torch.as_tensor(m) for m in ims], p, stop_ids=stop))
        assert tokens == [s.token_id for s in reference if s.token_id not in stop], f"request {i}"
        if p.logprobs:
            assert [e.token_id for e in h.logprobs] == [s.token_id for s in reference]
            for entry, step in zip(h.logprobs, reference, strict=True):
                logp = torch.log_softmax(step.logits.double(), -1)
                assert (
                    abs(entry.logprob - logp[step.token_id].item()) <= 1e-5 and len(entry.top) == p.logprobs
                )
    assert any(d > 0 and f > 0 for d, f in steps) and max(d for d, _ in steps) >= 8
    assert scheduler.kv_bytes_used == 0 and scheduler.n_running == 0
