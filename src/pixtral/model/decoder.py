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
from pixtral.model.kv_cache import PagedBatch, SequenceKVCache, causal_mask
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
        # For inference, wq/wk/wv may be replaced by one layer of their stacked rows (engine/fused_projections.py):
        # one weight read and one kernel call instead of three.
        self.wqkv: nn.Module | None = None

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        caches: list[SequenceKVCache] | PagedBatch | None,
        mask: torch.Tensor | None = None,
        q_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        if self.wqkv is not None:  # (B, T, dim) -> (B, T, (H + 2 KV) hd), split into views
            q, k, v = self.wqkv(x).split(
                [
                    self.n_heads * self.head_dim,
                    self.n_kv_heads * self.head_dim,
                    self.n_kv_heads * self.head_dim,
                ],
                dim=-1,
            )
        else:
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
        q = q.view(b, t, self.n_heads, self.head_dim)  # (B, T, H hd) -> (B, T, H, hd)
        k = k.view(b, t, self.n_kv_heads, self.head_dim)  # (B, T, KV hd) -> (B, T, KV, hd)
        v = v.view(b, t, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        if q_scale is not None:  # (B, T, 1, 1) float32
            q = q * q_scale.to(q.dtype)
        if caches is None:  # the whole sequence at once (prefill from empty, training)
            # no mask: SDPA's own causal masking skips the blocks above the diagonal (half the work)
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                attn_mask=mask,
                is_causal=mask is None and t > 1,
                enable_gqa=True,
            ).transpose(1, 2)  # (B, T, H, hd)
        elif isinstance(caches, PagedBatch):  # a packed step over the paged pool
            out = self._paged(q[0], k[0], v[0], caches)[None]
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

    def _paged(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PagedBatch) -> torch.Tensor:
        """q (N, H, hd), k, v (N, KV, hd) of a packed step -> (N, H, hd). The N new keys/values go to their
        pool slots in one indexed store; the one-token rows attend in one call over their gathered blocks
        (GQA as G queries per KV head, so SDPA keeps its fused kernel with a mask); each segment (a prefill
        chunk) attends causally over its own keys in one call."""
        pool = batch.pool
        keys_flat = pool.k[self.layer].view(-1, self.n_kv_heads, self.head_dim)  # (blocks * bs, KV, hd)
        values_flat = pool.v[self.layer].view(-1, self.n_kv_heads, self.head_dim)
        keys_flat.index_copy_(0, batch.slots, k)
        values_flat.index_copy_(0, batch.slots, v)
        out = torch.empty_like(q)
        n = batch.n_single
        if n:
            group = self.n_heads // self.n_kv_heads
            tables = batch.single_blocks.flatten()  # (n * max_blocks,)
            shape = (n, -1, self.n_kv_heads, self.head_dim)
            keys = pool.k[self.layer].index_select(0, tables).view(shape)  # (n, S, KV, hd)
            values = pool.v[self.layer].index_select(0, tables).view(shape)
            out[:n] = F.scaled_dot_product_attention(
                q[:n].view(n, self.n_kv_heads, group, self.head_dim),  # (n, KV, G, hd)
                keys.transpose(1, 2),  # (n, KV, S, hd)
                values.transpose(1, 2),
                attn_mask=batch.single_mask,  # (n, 1, 1, S)
            ).reshape(n, self.n_heads, self.head_dim)
        for seg in batch.segments:
            if seg.key_slots is None:  # from position 0: its keys are the new ones
                keys, values = k[seg.start : seg.end], v[seg.start : seg.end]
            else:
                keys, values = keys_flat[seg.key_slots], values_flat[seg.key_slots]  # (S, KV, hd)
            out[seg.start : seg.end] = F.scaled_dot_product_attention(
                q[seg.start : seg.end].transpose(0, 1)[None],  # (1, H, T, hd)
                keys.transpose(0, 1)[None],
                values.transpose(0, 1)[None],
                attn_mask=seg.mask,
                is_causal=seg.mask is None,  # from position 0: top-left causal is the causal mask
                enable_gqa=True,
            )[0].transpose(0, 1)
        return out


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
        caches: list[SequenceKVCache] | PagedBatch | None,
        mask: torch.Tensor | None = None,
        q_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, caches, mask, q_scale)
        return h + self.feed_forward(self.ffn_norm(h))
