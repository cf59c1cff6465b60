"""One tensor-parallel group per test module (spawning ranks costs seconds): `start_group` starts it from a
saved checkpoint, the module's fixture closes it."""

from __future__ import annotations

import torch

from pixtral.model.kv_cache import SequenceKVCache
from pixtral.model.pixtral import no_images
from pixtral.parallel.launch import LoadSpec, start


def start_group(folder, size: int, dtype: str = "float32", quantize: str | None = None):
    model, _ = start(
        LoadSpec(str(folder), dtype, "cpu", quantize, 32, threads=1), size, exit_on_rank_loss=False
    )
    return model


@torch.inference_mode()
def prefill_and_decode(model, ids: torch.Tensor, images: list[torch.Tensor], steps: int = 4):
    """Logits of a cached prefill and `steps` greedy decode steps: (list of (1, T, vocab), greedy tokens)."""
    cache = SequenceKVCache.for_model(model, ids.shape[1] + steps)
    logits = [model(ids, images, caches=[cache], last_only=True)]
    tokens = []
    for _ in range(steps):
        nxt = logits[-1][:, -1].argmax(-1, keepdim=True)  # (1, 1)
        tokens.append(int(nxt))
        logits.append(model(nxt, image_mask=no_images(nxt), caches=[cache]))
    return logits, tokens
