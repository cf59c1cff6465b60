"""Stacked projections for inference: in each decoder layer wq, wk, wv become one `wqkv` and w1, w3 one `w13`
(issues #16, #21; docs/engine.md, "Stacked projections"), as gpt-fast's wqkv and vLLM's merged layers.

Layers that read the same input are one layer over their stacked output rows: one weight read and one kernel
call per step instead of three (two), and the outputs are views of one result (`DecoderAttention`,
`FeedForward`). A decode step at batch 1 is a series of matrix-vector products whose speed depends on their
size: on the 'small' preset (float32, Intel Xeon, 2 cores) the 4 MB wk / wv read at 13 GB/s and the 46 MB
w1 / w3 at 25 GB/s, against 28 GB/s for the 1 GB output head. Stacking moves every layer toward the large ones.

The stacked layer is of the kind of its parts: a float `nn.Linear`, an int8 `Int8Linear` (ATen layout) or an
int4 `Int4Linear` packed for the CPU; parts of other kinds (or a mix) stay as they are. Call after loading and
quantizing and before `apply_cpu_kernels_` (which packs the stacked layers). The freed parts go back to the
OS layer by layer (engine/host_memory.py), so the stacking costs one layer of memory, not a copy of them
all. Training and tensor-parallel ranks keep the separate layers (checkpoint names, shards and gradients
are per layer).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pixtral.engine.host_memory import release_free_host_memory
from pixtral.engine.quantize import Int4Linear, Int8Linear


def stack_linears(parts: Sequence[nn.Module]) -> nn.Module | None:
    """One layer computing torch.cat([p(x) for p in parts], -1), or None when the parts cannot be stacked."""
    kinds = {type(p) for p in parts}
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    if kind is Int8Linear:
        return Int8Linear.stacked(parts)
    if kind is Int4Linear:
        return Int4Linear.stacked(parts)
    if kind is not nn.Linear or any(p.bias is not None for p in parts):
        return None
    weights = [p.weight for p in parts]
    if len({(w.dtype, w.device, w.shape[1]) for w in weights}) != 1:
        return None
    stacked = nn.Linear(weights[0].shape[1], sum(w.shape[0] for w in weights), bias=False, device="meta")
    stacked.weight = nn.Parameter(torch.cat([w.detach() for w in weights]), requires_grad=False)  # (sum N, K)
    return stacked


@torch.no_grad()
def fuse_projections_(model: nn.Module) -> int:
    """Stack each decoder layer's wq/wk/wv into `attention.wqkv` and w1/w3 into `feed_forward.w13`, in place;
    the separate layers are dropped (set to None). Returns the number of stacked layers made."""
    made = 0
    for layer in model.layers:
        attention, ffn = layer.attention, layer.feed_forward
        if attention.wqkv is None and attention.wq is not None:
            stacked = stack_linears([attention.wq, attention.wk, attention.wv])
            if stacked is not None:
                attention.wqkv, attention.wq, attention.wk, attention.wv = stacked, None, None, None
                made += 1
        if ffn.w13 is None and ffn.w1 is not None:
            stacked = stack_linears([ffn.w1, ffn.w3])
            if stacked is not None:
                ffn.w13, ffn.w1, ffn.w3 = stacked, None, None
                made += 1
        release_free_host_memory()  # this layer's freed parts, before the next layer allocates
    return made
