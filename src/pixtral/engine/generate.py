"""The decoding loop over the model: prefill the prompt (images included) into a KV cache, then one token
per step. Yields token ids; text, stop strings and streaming are the engine's job (engine.py).

The slow, simple reference the scheduler is tested against. Every tensor it makes (ids, KV cache, the
sampling generator) is on the model's device; images given on another device are moved there."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from pixtral.engine.sampling import SamplingParams, TokenHistory, process_logits, sample_next
from pixtral.model.kv_cache import SequenceKVCache
from pixtral.model.pixtral import Pixtral, no_images


@dataclass
class Step:
    token_id: int
    logits: torch.Tensor  # (vocab,) float32, the model's raw logits the token was drawn from (sampling.py)


@torch.inference_mode()
def decode_steps(
    model: Pixtral,
    prompt_ids: list[int],
    images: list[torch.Tensor],
    params: SamplingParams,
    stop_ids: frozenset[int] = frozenset(),
) -> Iterator[Step]:
    """Yield up to params.max_tokens steps; stops after yielding a token in stop_ids (e.g. EOS)."""
    device = model.device
    generator = None
    if not params.greedy:
        generator = seeded_generator(params.seed, device)
    cache = SequenceKVCache.for_model(model, len(prompt_ids) + params.max_tokens)
    ids = torch.tensor([prompt_ids], device=device)
    images = [im.to(device) for im in images]
    logits = model(ids, images or None, caches=[cache], last_only=True)[:, -1]  # (1, vocab)
    history = TokenHistory(prompt_ids, logits.shape[-1], logits.device) if params.penalised else None
    for n in range(params.max_tokens):
        token = sample_next(process_logits(logits, params, history, n, stop_ids), params, generator)  # (1,)
        if history is not None:
            history.add(token)
        yield Step(int(token), logits[0])
        if int(token) in stop_ids:
            return
        ids = token[:, None]  # (1, 1)
        logits = model(ids, image_mask=no_images(ids), caches=[cache])[:, -1]


def seeded_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """The sampling generator of one request, on the device its logits are on (a CUDA draw refuses a CPU
    generator); a fresh random seed when `seed` is None."""
    return torch.Generator(device=device).manual_seed(seed if seed is not None else torch.seed())


def greedy_generate_ids(
    model: Pixtral, prompt_ids: list[int], images: list[torch.Tensor], max_tokens: int
) -> list[int]:
    return [
        s.token_id for s in decode_steps(model, prompt_ids, images, SamplingParams(max_tokens=max_tokens))
    ]
