"""The Mistral NeMo decoder block: pre-norm, GQA attention with 1-D RoPE and a KV cache, SwiGLU (docs/architecture.md, "Decoder").

head_dim is given explicitly (NeMo: 128, while dim / n_heads = 160). No biases, no embedding scaling,
no sliding window: plain causal attention over the whole text + image sequence. Ministral 3 multiplies the
queries by a per-position factor after RoPE (`q_scale`, the llama-4 scaling; docs/architecture.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pixtral.config import TextConfig
from pixtral.model.feed_forward import FeedForward
from pixtral.model.kv_cache import PooledBatch, SequenceKVCache
from pixtral.model.norm import RMSNorm
from pixtral.model.rope import apply_rope


class DecoderAttention(nn.Module):
    def __init__(self, config: TextConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.wq = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        caches: list[SequenceKVCache] | PooledBatch | None,
        mask: torch.Tensor | None = None,
        q_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim)  # (B, T, dim) -> (B, T, H, hd)
        k = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim)  # (B, T, dim) -> (B, T, KV, hd)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        if q_scale is not None:  # (B, T, 1, 1) float32
            q = q * q_scale.to(q.dtype)
        if caches is None:  # the whole sequence at once (prefill from empty, training)
            if mask is None:
                mask = causal_mask(t, t, x.device)
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, enable_gqa=True
            ).transpose(1, 2)  # (B, T, H, hd)
        elif isinstance(caches, PooledBatch):  # a decode step of rows in one pool: one attention call
            out = self._pooled_decode(q, k, v, caches)
        else:  # each row against its own cache: rows may sit at different positions
            out = torch.empty_like(q)
            for row, cache in enumerate(caches):
                keys, values = cache.update(self.layer, k[row], v[row])  # (S, KV, hd), S = cached + T
                out[row] = F.scaled_dot_product_attention(  # 4-D (1, heads, len, hd): the fused kernel
                    q[row].transpose(0, 1)[None],
                    keys.transpose(0, 1)[None],
                    values.transpose(0, 1)[None],
                    attn_mask=causal_mask(t, keys.shape[0], x.device),
                    enable_gqa=True,
                )[0].transpose(0, 1)
        return self.wo(out.reshape(b, t, -1))  # (B, T, H, hd) -> (B, T, dim)

    def _pooled_decode(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PooledBatch
    ) -> torch.Tensor:
        """q, k, v (B, 1, heads, hd) of one new token per row -> (B, 1, H, hd): write each row's key and value
        at its position in its slot, then attend over the first n_keys positions of the pool's used slots at
        once (a view: no copy; positions past a row's length are masked, slots that are not rows dropped)."""
        keys, values = batch.pool.k[self.layer], batch.pool.v[self.layer]  # (slots, slot_len, KV, hd)
        keys[batch.slots, batch.positions] = k[:, 0]  # (B, KV, hd) into (slot_b, position_b)
        values[batch.slots, batch.positions] = v[:, 0]
        keys = keys[: batch.n_used, : batch.n_keys]  # (P, n_keys, KV, hd), P = used slots
        values = values[: batch.n_used, : batch.n_keys]
        # GQA without repeating keys: the G query heads of a KV head act as G queries of that head
        # (query head h uses KV head h // G), so SDPA takes its fused path with the mask broadcast over them.
        b, group = q.shape[0], self.n_heads // self.n_kv_heads
        queries = q.new_zeros(batch.n_used, self.n_kv_heads, group, self.head_dim)  # (P, KV, G, hd)
        queries[batch.slots] = q.view(b, self.n_kv_heads, group, self.head_dim)
        out = F.scaled_dot_product_attention(
            queries,
            keys.transpose(1, 2),  # (P, KV, n_keys, hd)
            values.transpose(1, 2),
            attn_mask=batch.mask,  # (P, 1, 1, n_keys)
        )  # (P, KV, G, hd)
        return out[batch.slots].reshape(b, 1, self.n_heads, self.head_dim)


def causal_mask(n_queries: int, n_keys: int, device: torch.device) -> torch.Tensor | None:
    """Bottom-right aligned causal mask (True = attend): query i sees keys up to n_keys - n_queries + i.
    None when every query may see every key (a single decode step)."""
    if n_queries == 1:
        return None
    offset = n_keys - n_queries
    q = torch.arange(n_queries, device=device)[:, None]
    k = torch.arange(n_keys, device=device)[None, :]
    return k <= q + offset  # (T, S)


class DecoderBlock(nn.Module):
    def __init__(self, config: TextConfig, layer: int) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = DecoderAttention(config, layer)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config.dim, config.hidden_dim)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        caches: list[SequenceKVCache] | PooledBatch | None,
        mask: torch.Tensor | None = None,
        q_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, caches, mask, q_scale)
        return h + self.feed_forward(self.ffn_norm(h))
