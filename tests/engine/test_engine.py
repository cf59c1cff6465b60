"""The engine: messages in, text out; streaming equals blocking; stop strings, EOS, context limits, cancellation."""

from __future__ import annotations

import base64
import io
import time

import pytest
import torch
from PIL import Image

from pixtral.config import preset, with_text
from pixtral.engine import Engine, SamplingParams
from pixtral.errors import InputError
from pixtral.model.init import init_random_weights_
from pixtral.model.pixtral import Pixtral
from pixtral.prompt.tokenizer import load_tokenizer


def make_engine(max_seq_len: int = 131072, seed: int = 0) -> Engine:
    config = with_text(preset("tiny"), max_seq_len=max_seq_len)
    model = init_random_weights_(Pixtral(config), seed=seed, std=0.15).eval()
    return Engine(model, load_tokenizer(None), model_name="tiny-test")


@pytest.fixture(scope="module")
def engine() -> Engine:
    return make_engine()


def png_url(size=(40, 20), color=(200, 30, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": png_url()}},
            {"type": "text", "text": "What colour is this?"},
        ],
    },
]


def test_stream_concatenation_equals_generate(engine):
    params = SamplingParams(max_tokens=24)
    done = engine.generate(MESSAGES, params)
    events = list(engine.stream(MESSAGES, params))
    assert "".join(e.text for e in events) == done.text
    assert [i for e in events for i in e.token_ids] == done.token_ids
    assert [e.finish_reason for e in events][-1] == done.finish_reason == "length"
    assert all(e.finish_reason is None for e in events[:-1])
    assert len(done.token_ids) == 24
    assert done.prompt_tokens == len(engine.encode(MESSAGES).token_ids)
    assert done.text == engine.tokenizer.decode(done.token_ids)


def test_stop_string_cuts_the_text_and_never_streams_past_it(engine):
    full = engine.generate(MESSAGES, SamplingParams(max_tokens=40)).text
    middle = len(full) // 2
    stop = full[middle : middle + 3]
    expected = full[: full.find(stop)]
    params = SamplingParams(max_tokens=40, stop=[stop, "never-appears-xyz"])
    done = engine.generate(MESSAGES, params)
    assert done.text == expected and done.finish_reason == "stop"
    streamed = "".join(e.text for e in engine.stream(MESSAGES, params))
    assert streamed == expected


def wait_until_idle(engine: Engine, timeout_s: float = 10.0) -> None:
    """A stream closed early is cancelled at the scheduler's next step, which may still run the model once."""
    deadline = time.monotonic() + timeout_s
    while engine.stats()["requests_running"] or engine.stats()["requests_waiting"]:
        assert time.monotonic() < deadline, engine.stats()
        time.sleep(0.01)


def test_eos_stops_generation_and_is_not_returned(engine):
    wait_until_idle(engine)  # the hook below counts every model call: none may belong to an older request
    calls = {"n": 0}

    def boost_eos_on_fourth_step(module, inputs, output):
        calls["n"] += 1
        if calls["n"] == 4:
            output = output.clone()
            output[..., engine.eos_id] = 1e4
        return output

    handle = engine.model.output.register_forward_hook(boost_eos_on_fourth_step)
    try:
        done = engine.generate(MESSAGES, SamplingParams(max_tokens=20))
    finally:
        handle.remove()
    assert done.finish_reason == "stop"
    assert len(done.token_ids) == 3 and engine.eos_id not in done.token_ids


def test_prompt_over_the_context_is_refused_and_max_tokens_is_clipped():
    small = make_engine(max_seq_len=40)
    with pytest.raises(InputError, match="context is 40"):
        small.generate([{"role": "user", "content": "word " * 60}])
    prompt_len = len(small.encode([{"role": "user", "content": "hello"}]).token_ids)
    done = small.generate([{"role": "user", "content": "hello"}], SamplingParams(max_tokens=500))
    assert len(done.token_ids) == 40 - prompt_len and done.finish_reason == "length"


def test_closing_a_stream_cancels_it_and_frees_the_engine(engine):
    stream = engine.stream(MESSAGES, SamplingParams(max_tokens=200))
    next(stream)
    stream.close()
    deadline = time.time() + 10
    while engine.scheduler.n_running and time.time() < deadline:
        time.sleep(0.01)
    assert engine.scheduler.n_running == 0 and engine.scheduler.kv_bytes_used == 0
    assert len(engine.generate(MESSAGES, SamplingParams(max_tokens=3)).token_ids) == 3


def test_seed_reproducibility_and_sampling_params(engine):
    p = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    assert engine.generate(MESSAGES, p).token_ids == engine.generate(MESSAGES, p).token_ids
    with pytest.raises(InputError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(InputError, match="max_tokens"):
        SamplingParams(max_tokens=0)


def test_top_k_1_and_greedy_agree(engine):
    greedy = engine.generate(MESSAGES, SamplingParams(max_tokens=10))
    top1 = engine.generate(MESSAGES, SamplingParams(max_tokens=10, temperature=0.9, top_k=1, seed=3))
    assert greedy.token_ids == top1.token_ids


def test_sampling_respects_top_k_and_top_p():
    from pixtral.engine.sampling import sample_next

    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    gen = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, SamplingParams(temperature=1.0, top_k=2), gen)) for _ in range(200)}
    assert draws == {0, 1}
    # softmax mass: 0.64, 0.23, 0.09, ...: top_p 0.7 keeps the first two tokens
    draws = {int(sample_next(logits, SamplingParams(temperature=1.0, top_p=0.7), gen)) for _ in range(200)}
    assert draws == {0, 1}
    # a top_p too small for float32 (it rounds to 0) still keeps the most likely token, in every row
    rows = torch.tensor([[3.0, 2.0, 1.0], [0.0, 5.0, 1.0]])
    assert sample_next(rows, SamplingParams(temperature=1.0, top_p=1e-50), gen).tolist() == [0, 1]
    # so does a temperature so small that dividing by it overflows (inf - inf = nan in the softmax)
    for tiny in (1e-40, 1e-300, 1e-6):
        assert sample_next(rows, SamplingParams(temperature=tiny), gen).tolist() == [0, 1], tiny


def test_image_token_cap_resizes_down_and_leaves_small_images_alone():
    from pixtral.prompt.tokenizer import load_tokenizer as tok

    engine = make_engine()
    capped = Engine(engine.model, tok(None), max_image_tokens=300)
    big = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": png_url((1024, 640))}},
                {"type": "image_url", "image_url": {"url": png_url((500, 500))}},
                {"type": "text", "text": "Compare."},
            ],
        }
    ]
    image_id = engine.model.config.vision.image_token_id
    n_full = engine.encode(big).token_ids.count(image_id)
    n_capped = capped.encode(big).token_ids.count(image_id)
    assert n_full == 64 * 40 + 32 * 32 and 200 < n_capped <= 300
    small = MESSAGES  # 40x20: 6 image tokens, under the cap: pixels identical to the uncapped engine's
    a, b = engine.encode(small), capped.encode(small)
    assert a.token_ids == b.token_ids and all((x == y).all() for x, y in zip(a.images, b.images, strict=True))
    assert len(capped.generate(big, SamplingParams(max_tokens=2)).token_ids) == 2


@torch.no_grad()
def test_bfloat16_engine_generates_and_tracks_float32(engine, tmp_path):
    from pixtral.checkpoint.loader import save_model

    save_model(engine.model, tmp_path / "m", "native")
    bf16 = Engine.load(tmp_path / "m", dtype="bfloat16")
    assert bf16.model.dtype == torch.bfloat16
    out = bf16.generate(MESSAGES, SamplingParams(max_tokens=5))
    assert len(out.token_ids) == 5
    prompt = engine.encode(MESSAGES)
    ids, pixels = torch.tensor([prompt.token_ids]), [torch.from_numpy(i) for i in prompt.images]
    ref = torch.log_softmax(engine.model(ids, pixels), -1)
    low = torch.log_softmax(bf16.model(ids, pixels), -1)
    assert low.dtype == torch.float32  # logits are returned in float32 whatever the weights
    cos = torch.nn.functional.cosine_similarity(ref.flatten(), low.flatten(), dim=0)
    assert cos > 0.99, cos


EXIT_WHILE_DECODING = """
import sys
from pixtral.config import preset, with_text
from pixtral.engine import Engine, SamplingParams
from pixtral.model.init import init_random_weights_
from pixtral.model.pixtral import Pixtral
from pixtral.prompt.tokenizer import load_tokenizer
model = init_random_weights_(Pixtral(with_text(preset("tiny"), max_seq_len=4096)), seed=0).eval()
engine = Engine(model, load_tokenizer(None))
stream = engine.stream([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=3000))
print(len(next(stream).token_ids), flush=True)
sys.exit(0)  # the scheduler thread is still decoding
"""


def test_process_exits_cleanly_while_the_scheduler_is_decoding():
    """Before the scheduler joined its thread at exit, torch's teardown under a running decode aborted the
    process (SIGABRT, "terminate called without an active exception") after the CLI had printed its answer."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", EXIT_WHILE_DECODING], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-1000:]
    assert done.stdout.strip() == "1"


def test_closed_engine_cancels_what_is_in_flight_and_refuses_new_requests():
    engine = make_engine(max_seq_len=4096)
    stream = engine.stream([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=3000))
    next(stream)
    engine.close()
    assert [e.finish_reason for e in stream][-1] == "cancelled"
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate([{"role": "user", "content": "hi"}])


def test_the_issue_15_command_that_samples_img_finishes():
    """`pixtral generate --prompt hi --temperature 5 --seed 0`: the bundled model samples [IMG] at token 182,
    which used to fail the next decode step ("1 [IMG] tokens but the images give 0 patch features")."""
    default = Engine.load(None)
    img = default.model.config.vision.image_token_id
    out = default.generate(
        [{"role": "user", "content": "hi"}], SamplingParams(max_tokens=200, temperature=5, seed=0)
    )
    assert img in out.token_ids  # the case under test happened
    assert out.finish_reason == "length" and len(out.token_ids) == 200
