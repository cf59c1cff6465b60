"""Device correctness without a GPU: the model sits on the CPU while torch's default device is `meta`, so any
tensor the engine creates without naming the model's device lands on meta, and the first op that mixes it
with the model's tensors raises. Every path of a request runs this way: the reference loop, the scheduler's
prefill chunks with images, batched decode, prefix-cache hits, seeded sampling, and the engine itself."""

from __future__ import annotations

import pytest
import torch

from pixtral.engine import scheduler as scheduler_module
from pixtral.engine.generate import decode_steps
from pixtral.engine.sampling import SamplingParams
from pixtral.engine.scheduler import Scheduler, SchedulerConfig
from tests.engine.test_scheduler import EOS, alone, collect, make_requests
from tests.factories import TEST_CONFIG


@pytest.fixture
def meta_scheduler_thread(monkeypatch):
    """The scheduler's thread runs with meta as its default device (torch's default device is per thread)."""
    loop = Scheduler._loop

    def loop_on_meta(self):
        with torch.device("meta"):
            loop(self)

    monkeypatch.setattr(scheduler_module.Scheduler, "_loop", loop_on_meta)


def params(i: int, sampled: bool, max_tokens: int = 6) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.8 if sampled else 0.0, seed=100 + i)


def test_the_meta_default_catches_a_tensor_created_without_a_device(test_model):
    with torch.device("meta"), pytest.raises((RuntimeError, NotImplementedError)):
        test_model(torch.tensor([[1, 2, 3]]))  # no device=: the ids land on meta, the weights are on the CPU


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "seeded-sampling"])
def test_reference_loop_creates_every_tensor_on_the_models_device(test_model, sampled):
    ids, images = make_requests(2)[1]  # one image
    expected = alone(test_model, ids, images, params(0, sampled))
    pixels = [torch.as_tensor(i) for i in images]  # on the CPU, as the caller gives them
    with torch.device("meta"):
        steps = decode_steps(test_model, ids, pixels, params(0, sampled), EOS)
        got = [s.token_id for s in steps if s.token_id not in EOS]
    assert got == expected


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "seeded-sampling"])
def test_scheduler_creates_every_tensor_on_the_models_device(test_model, meta_scheduler_thread, sampled):
    requests = make_requests(5)  # text only, one and two images; prefilled 8 tokens at a time, batched decode
    expected = [alone(test_model, ids, ims, params(i, sampled)) for i, (ids, ims) in enumerate(requests)]
    scheduler = Scheduler(test_model, SchedulerConfig(max_num_batched_tokens=8, kv_block_size=8))
    with torch.device("meta"):
        handles = [
            scheduler.submit(ids, ims, params(i, sampled), EOS) for i, (ids, ims) in enumerate(requests)
        ]
        results = [collect(h) for h in handles]
    for i, (tokens, finished) in enumerate(results):
        assert finished.reason in ("stop", "length"), f"request {i}: {finished}"
        assert tokens == expected[i], f"request {i}"


def test_prefix_cache_hit_creates_every_tensor_on_the_models_device(test_model, meta_scheduler_thread):
    ids, images = make_requests(2)[1]
    scheduler = Scheduler(test_model, SchedulerConfig(max_num_batched_tokens=8, kv_block_size=8))
    first, _ = collect(scheduler.submit(ids, images, params(0, True), EOS))
    follow_up = ids + first + [TEST_CONFIG.eos_id, 3, 1050, 1060, 1070, 4]
    expected = alone(test_model, follow_up, images, params(1, True))
    with torch.device("meta"):
        got, finished = collect(scheduler.submit(follow_up, images, params(1, True), EOS))
    assert finished.reason in ("stop", "length"), finished
    assert scheduler.prefix_cache.hits == 1
    assert got == expected


# The meta default catches tensors made without a device; these catch the ones made on the CPU by name.
REQUEST_PATH = [
    "engine/engine.py",
    "engine/scheduler.py",
    "engine/generate.py",
    "engine/image_cache.py",
    "engine/prefix_cache.py",
    "model/kv_cache.py",
    "model/decoder.py",
    "model/pixtral.py",
]


def test_the_request_path_never_names_the_cpu():
    import ast
    from pathlib import Path

    import pixtral

    root = Path(pixtral.__file__).parent
    found = []
    for rel in REQUEST_PATH:
        tree = ast.parse((root / rel).read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value == "cpu":
                found.append(f"{rel}:{node.lineno}: 'cpu'")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name = node.func.attr
                if name == "Generator" and not any(k.arg == "device" for k in node.keywords):
                    found.append(f"{rel}:{node.lineno}: torch.Generator() without device=")
                parent = parents.get(node)
                moved = isinstance(parent, ast.Attribute) and parent.attr == "to"
                if name in ("from_numpy", "as_tensor") and not moved:
                    found.append(f"{rel}:{node.lineno}: {name}(...) not moved .to(the model's device)")
    assert found == []


def test_sampling_generators_live_on_the_models_device(test_model):
    from pixtral.engine.generate import seeded_generator

    gen = seeded_generator(5, test_model.device)
    assert gen.device == test_model.device and gen.initial_seed() == 5
    scheduler = Scheduler(test_model)
    ids, images = make_requests(1)[0]
    request = scheduler.submit(ids, images, params(0, True), EOS)
    collect(request)
    assert request.generator is not None and request.generator.device == test_model.device


@pytest.mark.parametrize(
    "spec, expected", [("cpu", "cpu"), ("CPU", "cpu"), (torch.device("cpu"), "cpu"), ("auto", None)]
)
def test_device_names_resolve(spec, expected):
    from pixtral.engine.device import default_dtype, resolve_device

    device = resolve_device(spec)
    assert device.type == (expected or ("cuda" if torch.cuda.is_available() else "cpu"))
    assert default_dtype(device) == ("bfloat16" if device.type == "cuda" else "float32")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:99" if torch.cuda.is_available() else "cuda"])
def test_a_device_that_is_not_here_is_refused_with_its_name(spec):
    from pixtral.engine.device import resolve_device
    from pixtral.errors import InputError

    with pytest.raises(InputError, match="device"):
        resolve_device(spec)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from pixtral.cli import main

    folder = tmp_path_factory.mktemp("tiny")
    assert main(["init", "--out", str(folder), "--preset", "tiny", "--seed", "1"]) == 0
    return folder


def test_generate_takes_a_device_and_refuses_one_that_is_not_here(tiny_dir, capsys):
    from pixtral.cli import main

    base = ["generate", "--model", str(tiny_dir), "--prompt", "hi", "--max-tokens", "3", "--json"]
    assert main([*base, "--device", "cpu"]) == 0
    capsys.readouterr()
    if not torch.cuda.is_available():
        assert main([*base, "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: device 'cuda': no CUDA device is available here"), err
