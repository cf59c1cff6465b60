"""Tensor parallelism as a load plan: each rank builds and reads only its shard of the decoder
(docs/tensor-parallel.md).

The split (Megatron-style, two all-reduces per layer):
- wq, wk, wv, w1, w3 column-parallel: rank r holds rows [r, r + 1) / N of the output features, i.e. its
  query heads, its own KV heads (query head h uses KV head h // G, so heads split contiguously) and its
  slice of the FFN's hidden units; no communication;
- wo, w2 row-parallel: rank r holds the matching columns; each rank's product is a partial sum, all-reduced;
- the embedding and the output head vocab-parallel: rank r holds the rows of its vocabulary range; the
  embedding's lookups outside it are zero and the sum over ranks is exact; the output head's logits are
  gathered on rank 0 (the only rank that samples);
- the norms replicated; the vision encoder and the adapter on rank 0 only (rank 0 encodes images and sends
  the features with the step's inputs: parallel/lockstep.py).
The shard of one rank is an ordinary `Pixtral` built from `shard_config` (n_heads / N, n_kv_heads / N,
hidden_dim / N: the attention runs on its local heads as it is, and the KV caches made for it hold the
local heads), whose wo, w2, embedding and output are then wrapped by the modules below. The model files know
nothing of this. Any inner plan (a cast, int8/int4 quantization) applies to the shard it is given.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pixtral.checkpoint.loader import Checkpoint, LoadPlan, Readable
from pixtral.config import PixtralConfig
from pixtral.errors import ConfigError
from pixtral.model.pixtral import Pixtral

_COLUMN = re.compile(r"^layers\.\d+\.(attention\.(wq|wk|wv)|feed_forward\.(w1|w3))\.weight$")
_ROW = re.compile(r"^layers\.\d+\.(attention\.wo|feed_forward\.w2)\.weight$")
_VOCAB = ("tok_embeddings.weight", "output.weight")
RANK0_ONLY = ("vision_encoder.", "vision_language_adapter.", "pre_mm_projector_norm.", "patch_merger.")


class CommStats:
    """Seconds spent in the decoder's collectives (all-reduce, gather) in this process: the benchmark's
    all-reduce time per step."""

    seconds = 0.0
    calls = 0

    @classmethod
    def reset(cls) -> None:
        cls.seconds, cls.calls = 0.0, 0


def _timed(fn, *args, **kwargs) -> None:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    CommStats.seconds += time.perf_counter() - t0
    CommStats.calls += 1


def valid_sizes(config: PixtralConfig) -> list[int]:
    """The tensor-parallel sizes this model splits into: divisors of the KV heads that divide the FFN too."""
    t = config.text
    return [n for n in range(1, t.n_kv_heads + 1) if t.n_kv_heads % n == 0 and t.hidden_dim % n == 0]


def check_size(config: PixtralConfig, size: int, where: str = "this model") -> None:
    if size < 1 or size not in valid_sizes(config):
        raise ConfigError(
            f"--tensor-parallel-size {size}: {where} has {config.text.n_kv_heads} KV heads and FFN width "
            f"{config.text.hidden_dim}; each rank keeps whole KV heads, so the size must divide both: "
            f"valid sizes are {', '.join(map(str, valid_sizes(config)))}"
        )


def shard_config(config: PixtralConfig, size: int) -> PixtralConfig:
    """The config of one rank's decoder: its local heads and FFN width (the vocabulary stays whole: the
    embedding and output shards are made by ShardPlan.build)."""
    check_size(config, size)
    t = config.text
    local = replace(
        t, n_heads=t.n_heads // size, n_kv_heads=t.n_kv_heads // size, hidden_dim=t.hidden_dim // size
    )
    return replace(config, text=local)


def vocab_range(vocab_size: int, size: int, rank: int) -> tuple[int, int]:
    """Rank `rank`'s rows of the vocabulary: blocks of ceil(V / N) (the last one may be shorter)."""
    chunk = -(-vocab_size // size)
    return min(vocab_size, rank * chunk), min(vocab_size, (rank + 1) * chunk)


class ShardPlan(LoadPlan):
    """Load rank `rank` of `size`'s shard through `inner` (which casts or quantizes what it is given)."""

    def __init__(self, inner: LoadPlan, rank: int, size: int) -> None:
        super().__init__(inner.dtype, inner.device)
        self.inner, self.rank, self.size = inner, rank, size
        self.config: PixtralConfig | None = None

    def build(self, config: PixtralConfig) -> Pixtral:
        self.config = config
        model = self.inner.build(shard_config(config, self.size))
        a, b = vocab_range(config.text.vocab_size, self.size, self.rank)
        with torch.device("meta"):
            model.tok_embeddings = nn.Embedding(b - a, config.text.dim)
            model.output = nn.Linear(config.text.dim, b - a, bias=False)
        model.tie_embeddings_()
        return model

    def block(self, name: str) -> tuple[tuple[int, int] | None, tuple[int, int] | None] | None:
        """(rows, cols) of the tensor this rank reads, or None for the whole tensor."""
        t, r, n = self.config.text, self.rank, self.size
        if name in _VOCAB:
            return vocab_range(t.vocab_size, n, r), None
        if _COLUMN.match(name):
            rows = {
                "wq": t.n_heads * t.head_dim,
                "wk": t.n_kv_heads * t.head_dim,
                "wv": t.n_kv_heads * t.head_dim,
            }
            out = rows.get(name.split(".")[-2], t.hidden_dim) // n
            return (r * out, (r + 1) * out), None
        if _ROW.match(name):
            k = (t.n_heads * t.head_dim if ".attention." in name else t.hidden_dim) // n
            return None, (r * k, (r + 1) * k)
        return None

    def tensor(self, name: str, source: Readable, module: nn.Module) -> torch.Tensor | nn.Module | None:
        if self.rank != 0 and name.startswith(RANK0_ONLY):
            return LoadPlan.SKIP
        block = self.block(name)
        return self.inner.tensor(name, source.slice(*block) if block else source, module)

    def finish(self, model: Pixtral) -> Pixtral:
        """Wrap the partial-sum and vocabulary layers with their collectives."""
        for layer in model.layers:
            layer.attention.wo = RowParallel(layer.attention.wo)
            layer.feed_forward.w2 = RowParallel(layer.feed_forward.w2)
        v = self.config.text.vocab_size
        model.tok_embeddings = VocabParallelEmbedding(
            model.tok_embeddings, *vocab_range(v, self.size, self.rank)
        )
        model.output = VocabParallelOutput(model.output, v, self.size)
        return self.inner.finish(model)

    def description(self, ckpt: Checkpoint) -> str:
        return f"{self.inner.description(ckpt)} (tensor-parallel rank {self.rank} of {self.size})"


class RowParallel(nn.Module):
    """A linear layer holding some input columns of the weight: its output is a partial sum, all-reduced."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)  # (..., out) partial sum over this rank's input columns
        _timed(dist.all_reduce, y)
        return y


class VocabParallelEmbedding(nn.Module):
    """Rows [start, end) of the embedding; ids outside give zeros; the sum over ranks is the lookup."""

    def __init__(self, inner: nn.Embedding, start: int, end: int) -> None:
        super().__init__()
        self.inner, self.start, self.end = inner, start, end

    @property
    def weight(self) -> torch.Tensor:
        return self.inner.weight

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        outside = (token_ids < self.start) | (token_ids >= self.end)  # (B, T)
        local = torch.where(outside, 0, token_ids - self.start)
        h = F.embedding(local, self.inner.weight).masked_fill_(outside[..., None], 0.0)  # (B, T, dim)
        _timed(dist.all_reduce, h)
        return h


class VocabParallelOutput(nn.Module):
    """The output head's rows of this rank's vocabulary; rank 0 gathers the full logits (other ranks get
    their own block back: they never sample)."""

    def __init__(self, inner: nn.Module, vocab_size: int, size: int) -> None:
        super().__init__()
        self.inner, self.vocab_size, self.size = inner, vocab_size, size
        self.chunk = -(-vocab_size // size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        y = self.inner(h)  # (B, T, local vocab)
        if y.shape[-1] < self.chunk:  # the last rank's shorter block, padded for the gather
            y = F.pad(y, (0, self.chunk - y.shape[-1]))
        y = y.contiguous()
        if dist.get_rank() != 0:
            _timed(dist.gather, y, None, 0)
            return y
        parts = [torch.empty_like(y) for _ in range(self.size)]
        _timed(dist.gather, y, parts, 0)
        return torch.cat(parts, dim=-1)[..., : self.vocab_size]  # (B, T, vocab)
