"""n choices of one prompt: encoded, preprocessed, vision-encoded and prefilled once; each choice gets the
tokens it gets alone with seed + index; the engine contract (EngineClient) is what the server and fakes use."""

from __future__ import annotations

import pytest

from pixtral.engine import Engine, EngineClient, SamplingParams
from pixtral.engine import engine as engine_module
from pixtral.engine.scheduler import Scheduler, SchedulerConfig
from pixtral.errors import InputError
from tests.engine.test_engine import MESSAGES, make_engine
from tests.engine.test_scheduler import EOS, alone, collect, make_requests


def test_n_choices_encode_and_prefill_once_and_each_equals_its_seed_alone(monkeypatch):
    engine = make_engine()
    calls = []
    encode_chat = engine_module.encode_chat
    monkeypatch.setattr(engine_module, "encode_chat", lambda *a, **k: calls.append(1) or encode_chat(*a, **k))
    params = SamplingParams(max_tokens=8, temperature=1.0, seed=7, n=3)
    choices = engine.generate_choices(MESSAGES, params)
    stats = engine.stats()
    assert len(calls) == 1
    assert stats["prefill_tokens"] == choices[0].prompt_tokens  # once, not 3 times
    assert (stats["image_cache_misses"], stats["image_cache_hits"]) == (1, 0)  # the vision encoder ran once
    engine.close()
    for i, choice in enumerate(choices):
        alone_engine = make_engine()  # fresh: no cache shared with the run above
        single = alone_engine.generate(MESSAGES, SamplingParams(max_tokens=8, temperature=1.0, seed=7 + i))
        alone_engine.close()
        assert (choice.token_ids, choice.text, choice.finish_reason) == (
            single.token_ids,
            single.text,
            single.finish_reason,
        ), f"choice {i}"
    assert len({tuple(c.token_ids) for c in choices}) > 1  # the seeds differ, so do the samples


def test_stream_tags_each_choice_and_an_encoded_prompt_is_not_encoded_again(monkeypatch):
    engine = make_engine()
    prompt = engine.encode(MESSAGES)
    monkeypatch.setattr(engine_module, "encode_chat", lambda *a, **k: pytest.fail("encoded again"))
    events = list(engine.stream(prompt, SamplingParams(max_tokens=5, n=2)))
    engine.close()
    assert {e.index for e in events} == {0, 1}
    finishes = [e for e in events if e.finish_reason is not None]
    assert sorted(e.index for e in finishes) == [0, 1]
    text = ["".join(e.text for e in events if e.index == i) for i in (0, 1)]
    assert text[0] == text[1]  # greedy: both choices are the same


def test_generate_refuses_n_above_1_and_n_below_1_is_refused():
    engine = make_engine()
    with pytest.raises(InputError, match="generate_choices"):
        engine.generate(MESSAGES, SamplingParams(max_tokens=2, n=2))
    engine.close()
    with pytest.raises(InputError, match="n must be at least 1"):
        SamplingParams(n=0)


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "seeded-sampling"])
def test_choices_whose_leader_is_cancelled_before_its_prefill_prefill_on_their_own(test_model, sampled):
    ids, images = make_requests(2)[1]
    params = [
        SamplingParams(max_tokens=6, temperature=0.9 if sampled else 0.0, seed=40 + i) for i in range(3)
    ]
    scheduler = Scheduler(test_model, SchedulerConfig(max_num_batched_tokens=4))
    requests = scheduler.submit_choices(ids, images, params, EOS)
    requests[0].cancel()
    assert collect(requests[0])[1].reason == "cancelled"
    for i in (1, 2):
        tokens, finished = collect(requests[i])
        assert finished.reason in ("stop", "length")
        assert tokens == alone(test_model, ids, images, params[i]), f"choice {i}"
    assert scheduler.kv_bytes_used == 0


def test_the_engine_and_the_servers_fake_keep_the_contract():
    from tests.serve.fake_engine import FakeEngine

    engine = make_engine()
    assert isinstance(engine, EngineClient)
    engine.close()
    assert isinstance(FakeEngine(), EngineClient)
    missing = [name for name in dir(EngineClient) if not name.startswith("_") and not hasattr(Engine, name)]
    assert set(missing) <= {"model_name", "untrained", "thread_safe", "tokenizer"}  # instance attributes
