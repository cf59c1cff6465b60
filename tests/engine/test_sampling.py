"""The sampling controls (penalties, min_p, logit_bias, min_tokens, ignore_eos, stop_token_ids) and logprobs:
each changes one step's logits exactly as its formula says (the formulas of vLLM's sampler, written out here
element by element as the oracle), and the scheduler's fast path gives the tokens of the slow reference path."""

from __future__ import annotations

import math

import pytest
import torch

from pixtral.config import preset, with_text
from pixtral.engine import Engine
from pixtral.engine.generate import decode_steps
from pixtral.engine.sampling import (
    SamplingParams,
    TokenHistory,
    apply_min_p,
    process_logits,
    sample_batch,
    sample_next,
    token_logprobs,
)
from pixtral.engine.scheduler import Scheduler
from pixtral.errors import InputError
from pixtral.model.init import init_random_weights_
from pixtral.model.pixtral import Pixtral
from pixtral.prompt.tokenizer import load_tokenizer
from tests.engine.test_scheduler import collect
from tests.factories import TEST_CONFIG, prompt_with_images

V = 12
EOS = TEST_CONFIG.eos_id


def one_step_logits(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, V, generator=torch.Generator().manual_seed(seed)) * 3  # (1, V), both signs


def history(prompt: list[int], generated: list[int]) -> TokenHistory:
    h = TokenHistory(prompt, V, "cpu")
    h.add(torch.tensor(generated))
    return h


PROMPT, GENERATED = [1, 2, 2, 5], [5, 7, 7, 7, 9]  # 5 in both; 7 three times; 9 once; 1, 2 prompt only


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_prompt_and_output_ids():
    logits = one_step_logits()
    out = process_logits(logits, SamplingParams(repetition_penalty=1.7), history(PROMPT, GENERATED), 5, ())
    seen = set(PROMPT) | set(GENERATED)
    for t in range(V):
        x = logits[0, t].item()
        want = (x / 1.7 if x > 0 else x * 1.7) if t in seen else x
        assert out[0, t].item() == pytest.approx(want, abs=1e-6), t


@pytest.mark.parametrize(("presence", "frequency"), [(0.5, 0.0), (0.0, 0.3), (-0.4, 1.1)])
def test_presence_and_frequency_penalties_count_generated_tokens_only(presence, frequency):
    logits = one_step_logits(1)
    params = SamplingParams(presence_penalty=presence, frequency_penalty=frequency)
    out = process_logits(logits, params, history(PROMPT, GENERATED), 5, ())
    for t in range(V):
        count = GENERATED.count(t)
        want = logits[0, t].item() - frequency * count - presence * (count > 0)
        assert out[0, t].item() == pytest.approx(want, abs=1e-6), t


def test_all_penalties_together_apply_repetition_first():
    logits = one_step_logits(2)
    params = SamplingParams(repetition_penalty=1.3, presence_penalty=0.2, frequency_penalty=0.1)
    out = process_logits(logits, params, history(PROMPT, GENERATED), 5, ())
    for t in range(V):
        x, count = logits[0, t].item(), GENERATED.count(t)
        if t in set(PROMPT) | set(GENERATED):
            x = x / 1.3 if x > 0 else x * 1.3
        assert out[0, t].item() == pytest.approx(x - 0.1 * count - 0.2 * (count > 0), abs=1e-6), t


def test_logit_bias_adds_to_its_ids_and_min_tokens_masks_the_stop_ids_until_reached():
    logits = one_step_logits(3)
    params = SamplingParams(logit_bias={3: 100.0, 4: -2.5}, min_tokens=2)
    out = process_logits(logits, params, None, 1, frozenset({EOS, 6}))
    want = logits.clone()
    want[0, 3] += 100.0
    want[0, 4] -= 2.5
    want[0, EOS] = want[0, 6] = -math.inf
    assert torch.equal(out, want)
    # once min_tokens are out, the stop ids are back
    assert torch.equal(process_logits(logits, SamplingParams(min_tokens=2), None, 2, {EOS, 6}), logits)


def test_neutral_parameters_leave_the_logits_untouched():
    logits = one_step_logits(4)
    assert process_logits(logits, SamplingParams(), None, 0, {EOS}) is logits


def test_min_p_drops_tokens_below_min_p_times_the_top_probability():
    logits = one_step_logits(5)
    probs = torch.softmax(logits, -1)
    out = apply_min_p(logits, torch.tensor([0.2]))
    for t in range(V):
        kept = probs[0, t] >= 0.2 * probs.max()
        assert out[0, t].item() == (logits[0, t].item() if kept else -math.inf), t
    gen = torch.Generator().manual_seed(0)
    params = SamplingParams(temperature=1.0, min_p=0.2)
    draws = {int(sample_next(logits, params, gen)) for _ in range(300)}
    assert draws == {t for t in range(V) if probs[0, t] >= 0.2 * probs.max()}


def test_min_p_applies_after_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0]])  # probs at temperature 1: .67 .24 .09; at 0.5: .87 .12 .02
    gen = torch.Generator().manual_seed(0)
    hot = {int(sample_next(logits, SamplingParams(temperature=1.0, min_p=0.3), gen)) for _ in range(300)}
    cold = {int(sample_next(logits, SamplingParams(temperature=0.5, min_p=0.3), gen)) for _ in range(300)}
    assert hot == {0, 1} and cold == {0}


def test_token_logprobs_are_the_log_softmax_of_the_raw_logits():
    logits = one_step_logits(6)
    (entry,) = token_logprobs(logits, torch.tensor([4]), 3)
    logp = torch.log_softmax(logits[0].double(), -1)
    assert entry.token_id == 4 and entry.logprob == pytest.approx(logp[4].item(), abs=1e-5)
    order = logp.argsort(descending=True)[:3].tolist()
    assert [i for i, _ in entry.top] == order
    assert [lp for _, lp in entry.top] == pytest.approx(logp[order].tolist(), abs=1e-5)
    assert token_logprobs(logits, torch.tensor([4]), 0)[0].top == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_p": 1.5}, "min_p"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"logit_bias": {5: 101.0}}, "logit_bias"),
        ({"logit_bias": {-1: 1.0}}, "logit_bias"),
        ({"min_tokens": 9, "max_tokens": 8}, "min_tokens"),
        ({"stop_token_ids": [-2]}, "stop_token_ids"),
        ({"logprobs": 21}, "logprobs"),
    ],
)
def test_out_of_range_values_are_refused_by_name(kwargs, field):
    with pytest.raises(InputError, match=field):
        SamplingParams(**kwargs)


# ---- the scheduler (fast path) against decode_steps (slow reference path) --------------------------------


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_tokens=12, repetition_penalty=1.8, presence_penalty=0.5, frequency_penalty=0.7),
        SamplingParams(max_tokens=12, temperature=0.8, seed=3, min_p=0.05, frequency_penalty=1.5),
        SamplingParams(max_tokens=12, logit_bias={1100: 3.0, EOS: -100.0}, min_tokens=4, logprobs=5),
    ],
    ids=["greedy-penalties", "sampled-min-p", "bias-min-tokens-logprobs"],
)
def test_scheduler_tokens_and_logprobs_equal_the_reference_path(test_model, params):
    ids, images = prompt_with_images([(2, 2)], seed=1)
    ids = ids[0].tolist()
    stop = params.stop_ids(EOS)
    steps = list(decode_steps(test_model, ids, images, params, stop_ids=stop))
    request = Scheduler(test_model).submit(ids, [im.numpy() for im in images], params, stop)
    tokens, finished = collect(request)
    assert tokens == [s.token_id for s in steps if s.token_id not in stop]
    if params.repetition_penalty != 1.0:  # the penalties really changed the greedy tokens
        plain = [s.token_id for s in decode_steps(test_model, ids, images, SamplingParams(max_tokens=12))]
        assert plain != tokens
    if params.logprobs:
        assert len(request.logprobs) == len(steps)
        for step, entry in zip(steps, request.logprobs, strict=True):
            logp = torch.log_softmax(step.logits.double(), -1)
            assert entry.token_id == step.token_id
            assert abs(entry.logprob - logp[step.token_id].item()) <= 1e-5
            assert [i for i, _ in entry.top] == logp.argsort(descending=True)[:5].tolist()


# ---- the engine: EOS, stop ids, min_tokens --------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Engine:
    config = with_text(preset("tiny"), max_seq_len=4096)
    model = init_random_weights_(Pixtral(config), seed=0, std=0.15).eval()
    return Engine(model, load_tokenizer(None), model_name="tiny-test")


HELLO = [{"role": "user", "content": "Hello"}]


def test_eos_forced_stops_at_once_unless_ignore_eos_or_min_tokens(engine):
    eos = engine.eos_id
    forced = SamplingParams(max_tokens=6, logit_bias={eos: 100.0})
    out = engine.generate(HELLO, forced)
    assert out.token_ids == [] and out.finish_reason == "stop"
    out = engine.generate(HELLO, SamplingParams(max_tokens=6, logit_bias={eos: 100.0}, ignore_eos=True))
    assert out.token_ids == [eos] * 6 and out.finish_reason == "length" and out.text == ""
    out = engine.generate(HELLO, SamplingParams(max_tokens=6, logit_bias={eos: 100.0}, min_tokens=3))
    assert len(out.token_ids) == 3 and eos not in out.token_ids and out.finish_reason == "stop"


def test_stop_token_ids_end_generation_like_eos(engine):
    free = engine.generate(HELLO, SamplingParams(max_tokens=8))
    stop_at = free.token_ids[3]
    first = free.token_ids.index(stop_at)
    out = engine.generate(HELLO, SamplingParams(max_tokens=8, stop_token_ids=[stop_at]))
    assert out.token_ids == free.token_ids[:first] and out.finish_reason == "stop"


def test_token_ids_outside_the_vocabulary_are_refused_by_name(engine):
    with pytest.raises(InputError, match="logit_bias"):
        engine.generate(HELLO, SamplingParams(logit_bias={10**6: 1.0}))
    with pytest.raises(InputError, match="stop_token_ids"):
        engine.generate(HELLO, SamplingParams(stop_token_ids=[10**6]))


def test_engine_logprobs_align_with_the_generated_ids(engine):
    out = engine.generate(HELLO, SamplingParams(max_tokens=7, logprobs=2, stop=["zz"]))
    assert out.logprobs is not None and [e.token_id for e in out.logprobs] == out.token_ids
    assert all(len(e.top) == 2 and e.top[0][1] >= e.logprob - 1e-6 for e in out.logprobs)


# ---- batched sampling: per-row parameters and generators ---------------------------------------------------

MIXED = [
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=0.7, seed=1),
    SamplingParams(temperature=1.3, top_k=3, seed=2),
    SamplingParams(temperature=1.0, top_p=0.6, seed=3),
    SamplingParams(temperature=0.9, min_p=0.1, top_k=5, top_p=0.9, seed=4),
    SamplingParams(temperature=1.0, top_k=1, seed=5),  # greedy by top_k
]


def generators(params) -> list[torch.Generator | None]:
    return [None if p.greedy else torch.Generator().manual_seed(p.seed) for p in params]


def test_a_rows_draws_do_not_depend_on_the_rows_batched_with_it():
    logits = torch.randn(len(MIXED), V, generator=torch.Generator().manual_seed(7)) * 2
    batched_gens, alone_gens = generators(MIXED), generators(MIXED)
    for _ in range(30):
        together = sample_batch(logits, MIXED, batched_gens).tolist()
        alone = [
            int(sample_batch(logits[i : i + 1], [p], [g])[0])
            for i, (p, g) in enumerate(zip(MIXED, alone_gens, strict=True))
        ]
        assert together == alone
        assert together[0] == int(logits[0].argmax()) and together[-1] == int(logits[-1].argmax())
    # a sub-batch of the same rows (other neighbours) still gives each row its own sequence
    sub = [1, 3]
    gens = generators([MIXED[i] for i in sub])
    ref = generators(MIXED)
    for _ in range(10):
        got = sample_batch(logits[sub], [MIXED[i] for i in sub], gens).tolist()
        want = [int(sample_batch(logits[i : i + 1], [MIXED[i]], [ref[i]])[0]) for i in sub]
        assert got == want


def test_the_exponential_race_draws_the_softmax_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    params = SamplingParams(temperature=1.0, seed=0)
    gen = torch.Generator().manual_seed(0)
    n = 4000
    counts = torch.bincount(
        torch.cat(
            [sample_batch(logits.expand(100, -1), [params] * 100, [gen] * 100) for _ in range(n // 100)]
        ),
        minlength=4,
    )
    expected = torch.softmax(logits[0], -1) * n
    # 4 sigma of a binomial count: fails on a wrong distribution (e.g. sampling without temperature 1)
    assert ((counts - expected).abs() <= 4 * (expected * (1 - expected / n)).sqrt()).all(), (counts, expected)


def test_batched_sampling_reads_nothing_back_to_the_host():
    from tests.model.test_host_sync import HostReads

    logits = torch.randn(len(MIXED), V)
    gens = generators(MIXED)
    with HostReads() as reads:
        sample_batch(logits, MIXED, gens)
    assert reads.seen == []
