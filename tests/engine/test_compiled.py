"""The compiled decode step (engine/compiled.py) gives the eager engine's greedy tokens, across batch sizes that
need padding rows and table widths that grow."""

from __future__ import annotations

import dataclasses
import time

import pytest

from pixtral.engine.compiled import bucket
from pixtral.engine.sampling import SamplingParams
from pixtral.engine.scheduler import Scheduler, SchedulerConfig
from tests.engine.test_scheduler import EOS, alone, collect, make_requests
from tests.factories import TEST_CONFIG, random_model

# One decoder layer: compile time grows with the unrolled layers, and one is enough to compare the paths.
ONE_LAYER = dataclasses.replace(TEST_CONFIG, text=dataclasses.replace(TEST_CONFIG.text, n_layers=1))


def test_batch_buckets():
    assert [bucket(n) for n in (1, 2, 3, 5, 8, 9, 17, 32)] == [1, 2, 4, 8, 8, 16, 24, 32]


@pytest.mark.slow  # one inductor compilation: ~20-40 s on 2 busy cores
def test_compiled_and_eager_decode_give_identical_greedy_tokens():
    test_model = random_model(ONE_LAYER)
    requests = make_requests(3)  # 3 rows: padded to 4; ~20 positions + 12 tokens: table widths 2 -> 3 blocks
    params = SamplingParams(max_tokens=12)
    start = time.perf_counter()
    scheduler = Scheduler(test_model, SchedulerConfig(compile=True))
    handles = [scheduler.submit(ids, ims, params, EOS) for ids, ims in requests]
    results = [collect(h, timeout=120) for h in handles]
    for (ids, ims), (tokens, finished) in zip(requests, results, strict=True):
        assert finished.reason in ("length", "stop"), finished
        assert tokens == alone(test_model, ids, ims, params)
    assert scheduler._decode_step.calls >= 10  # the decode steps ran compiled
    scheduler.close()
    print(f"compiled engine run: {time.perf_counter() - start:.1f} s")
