"""The Mistral NeMo decoder block: pre-norm, GQA attention with 1-D RoPE and a KV cache, SwiGLU (spec §1).

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
from pixtral.model.kv_cache import SequenceKVCache
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
        caches: list[SequenceKVCache] | None,
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
        caches: list[SequenceKVCache] | None,
        mask: torch.Tensor | None = None,
        q_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, caches, mask, q_scale)
        return h + self.feed_forward(self.ffn_norm(h))
