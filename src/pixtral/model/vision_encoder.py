"""Pixtral-ViT: the vision encoder, trained from scratch at native resolution (docs/architecture.md, "Vision encoder").

Images of any size (sides multiples of the patch size) are cut into 16x16 patches, packed into one
sequence, and run through bidirectional transformer blocks in which a patch attends only to the patches of
its own image (block-diagonal attention). The block-diagonal mask is never materialised: attention runs per
image, with images of the same patch count batched together, so memory grows with sum(n_i^2), not
(sum n_i)^2. Positions are 2-D (row, column) through RoPE-2D, restarted at (0, 0) for every image.
No CLS token, no absolute position embedding, no final norm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pixtral.config import VisionConfig
from pixtral.model.feed_forward import FeedForward
from pixtral.model.norm import RMSNorm
from pixtral.model.rope import apply_rope, rope_2d_angles, rope_table


@dataclass(frozen=True)
class PatchLayout:
    """Where each image's patches sit in the packed sequence."""

    grids: list[tuple[int, int]]  # (rows, cols) of patches per image, prompt order

    @property
    def seqlens(self) -> list[int]:
        return [r * c for r, c in self.grids]

    def groups(self) -> dict[int, list[int]]:
        """Image indices grouped by patch count, so same-sized images share one batched attention call."""
        out: dict[int, list[int]] = {}
        for i, n in enumerate(self.seqlens):
            out.setdefault(n, []).append(i)
        return out

    def positions(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and column of every packed patch, row-major within each image.  -> (N,), (N,)"""
        rows, cols = [], []
        for r, c in self.grids:
            rr, cc = torch.meshgrid(
                torch.arange(r, device=device), torch.arange(c, device=device), indexing="ij"
            )
            rows.append(rr.reshape(-1))
            cols.append(cc.reshape(-1))
        return torch.cat(rows), torch.cat(cols)


class VisionAttention(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        dim = config.hidden_size
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, layout: PatchLayout) -> torch.Tensor:
        n = x.shape[0]
        q = self.wq(x).view(n, self.n_heads, self.head_dim)  # (N, dim) -> (N, H, hd)
        k = self.wk(x).view(n, self.n_heads, self.head_dim)
        v = self.wv(x).view(n, self.n_heads, self.head_dim)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        out = block_diagonal_attention(q, k, v, layout)  # (N, H, hd)
        return self.wo(out.reshape(n, -1))


def block_diagonal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PatchLayout
) -> torch.Tensor:
    """Bidirectional attention within each image only. q, k, v: (N, H, hd) packed -> (N, H, hd)."""
    seqlens = layout.seqlens
    if len(seqlens) == 1:  # 4-D inputs: SDPA's fused CPU kernel, not the math fallback
        heads_first = [t.transpose(0, 1)[None] for t in (q, k, v)]  # (1, H, N, hd)
        return F.scaled_dot_product_attention(*heads_first)[0].transpose(0, 1)
    starts = [0]
    for n in seqlens[:-1]:
        starts.append(starts[-1] + n)
    out = torch.empty_like(q)
    for n, images in layout.groups().items():
        index = torch.cat([torch.arange(starts[i], starts[i] + n, device=q.device) for i in images])
        qs, ks, vs = (_gather_images(t, index, len(images)) for t in (q, k, v))  # (n_images, H, n, hd)
        o = F.scaled_dot_product_attention(qs, ks, vs)
        out.index_copy_(0, index, o.transpose(1, 2).reshape(-1, *q.shape[1:]))
    return out


def _gather_images(t: torch.Tensor, index: torch.Tensor, n_images: int) -> torch.Tensor:
    """Rows `index` of packed (N, H, hd) as a batch of same-sized images: -> (n_images, H, n, hd)."""
    return t.index_select(0, index).view(n_images, -1, *t.shape[1:]).transpose(1, 2)


class VisionBlock(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.attention = VisionAttention(config)
        self.ffn_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.feed_forward = FeedForward(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, layout: PatchLayout) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, layout)
        return h + self.feed_forward(self.ffn_norm(h))


class VisionTransformer(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VisionBlock(config) for _ in range(config.num_hidden_layers))


class VisionEncoder(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_conv = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=False,
        )
        self.ln_pre = RMSNorm(config.hidden_size, config.norm_eps)
        self.transformer = VisionTransformer(config)

    def layout(self, images: list[torch.Tensor]) -> PatchLayout:
        p, limit = self.config.patch_size, self.config.image_size
        grids = []
        for i, img in enumerate(images):
            if img.dim() != 3 or img.shape[0] != self.config.num_channels:
                raise ValueError(
                    f"image {i}: expected a ({self.config.num_channels}, H, W) tensor, got {tuple(img.shape)}"
                )
            h, w = img.shape[1:]
            if h % p or w % p or not (0 < h <= limit and 0 < w <= limit):
                raise ValueError(
                    f"image {i}: size {h}x{w} must be a multiple of {p}, at most {limit} per side"
                )
            grids.append((h // p, w // p))
        return PatchLayout(grids)

    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        """images: list of (C, H_i, W_i) -> packed features (sum_i H_i W_i / p^2, hidden_size)."""
        layout = self.layout(images)
        dtype = self.patch_conv.weight.dtype
        patches = [
            self.patch_conv(img.to(dtype)[None]).flatten(2)[0].T  # (C, H, W) -> (h*w, hidden), row-major
            for img in images
        ]
        x = self.ln_pre(torch.cat(patches))  # (N, hidden)
        rows, cols = layout.positions(x.device)
        rope = rope_table(rope_2d_angles(rows, cols, self.config.head_dim, self.config.rope_theta))
        for layer in self.transformer.layers:
            x = layer(x, rope, layout)
        return x
