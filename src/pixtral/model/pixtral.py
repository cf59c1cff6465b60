"""Pixtral: vision encoder + adapter + Mistral NeMo decoder (docs/architecture.md).

The model takes token ids, pixel tensors (or their features) and the KV caches it continues, and returns
float32 logits. It knows nothing of files, tokenizers, HTTP or sampling. Its parameter names are the Mistral native tensor names, so a native
checkpoint loads as is and the Hugging Face layout is one rename-and-permute away (checkpoint/hf_names.py).

Merge rule: adapter outputs replace the embeddings of `[IMG]` positions only, in order (row-major patches of
image 1, then image 2, ...). `[IMG_BREAK]` and `[IMG_END]` keep their ordinary token embeddings. Only prompt
positions take image features: a caller feeding generated tokens (which may be the `[IMG]` id too) says
which positions are image positions with `image_mask`; the model cannot tell a prompt from a generation.

The family's variants (docs/architecture.md, "The Pixtral family") are config switches: a projector RMSNorm
and a patch merger between the vision encoder and the adapter (Mistral Small 3.1+; one [IMG] per merged
block), YaRN and the llama-4 query scaling in the decoder, and an output matrix tied to the embeddings.
"""

from __future__ import annotations

import torch
from torch import nn

from pixtral.config import PixtralConfig
from pixtral.model.adapter import PatchMerger, VisionLanguageAdapter
from pixtral.model.decoder import DecoderBlock
from pixtral.model.kv_cache import PagedBatch, SequenceKVCache
from pixtral.model.norm import RMSNorm
from pixtral.model.rope import decoder_rope, llama4_query_scale
from pixtral.model.vision_encoder import VisionEncoder


class ImageTokenMismatch(ValueError):
    """The prompt's [IMG] count differs from the number of patches the images produce."""


class Pixtral(nn.Module):
    TIED_NAMES = ("output.weight",)  # absent from checkpoints of models with tied embeddings

    def __init__(self, config: PixtralConfig) -> None:
        super().__init__()
        self.config = config
        t, v = config.text, config.vision
        self.vision_encoder = VisionEncoder(v)
        if v.add_pre_mm_projector_layer_norm:
            self.pre_mm_projector_norm = RMSNorm(v.hidden_size, t.norm_eps)  # the *text* eps, as trained
        if v.has_patch_merger:
            self.patch_merger = PatchMerger(v.hidden_size, v.spatial_merge_size)
        self.vision_language_adapter = VisionLanguageAdapter(v.hidden_size, t.dim, bias=v.adapter_bias)
        self.tok_embeddings = nn.Embedding(t.vocab_size, t.dim)
        self.layers = nn.ModuleList(DecoderBlock(t, i) for i in range(t.n_layers))
        self.norm = RMSNorm(t.dim, t.norm_eps)
        self.output = nn.Linear(t.dim, t.vocab_size, bias=False)
        self.tie_embeddings_()

    def tie_embeddings_(self) -> None:
        """With tied embeddings, make output.weight the embedding matrix itself (again after a load that
        replaced the parameters, e.g. load_state_dict(assign=True))."""
        if self.config.text.tied_embeddings:
            self.output.weight = self.tok_embeddings.weight

    @property
    def dtype(self) -> torch.dtype:
        return self.norm.weight.dtype  # not output.weight: that layer may be quantized

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    def encode_images(self, images: list[torch.Tensor]) -> torch.Tensor:
        """list of (3, H_i, W_i) pixels -> (sum of [IMG] tokens, text dim) features for the [IMG] positions:
        one per patch, or one per merged block of patches with the patch merger."""
        x = self.vision_encoder(images)  # (sum of patches, vision dim)
        if self.config.vision.add_pre_mm_projector_layer_norm:
            x = self.pre_mm_projector_norm(x)
        if self.config.vision.has_patch_merger:
            x = self.patch_merger(x, self.vision_encoder.layout(images).grids)  # (sum of blocks, vision dim)
        return self.vision_language_adapter(x)

    def embed(
        self,
        token_ids: torch.Tensor,
        image_features: torch.Tensor | None,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) ids + (n_img_tokens, dim) features -> (B, T, dim), features scattered onto the image positions:
        `image_mask` (B, T) bool, by default the [IMG] ids. Other positions keep their token embedding.
        A mask without features (`no_images`, a decode step) means no image positions: it is not read back to
        count them, so a decode step makes no host sync."""
        h = self.tok_embeddings(token_ids)
        if image_features is None and image_mask is not None:
            return h
        is_image = token_ids == self.config.vision.image_token_id if image_mask is None else image_mask
        n_slots = int(is_image.sum())
        n_features = 0 if image_features is None else image_features.shape[0]
        if n_slots != n_features:
            raise ImageTokenMismatch(
                f"the prompt has {n_slots} [IMG] tokens but the images give {n_features} patch features"
            )
        if n_slots:
            h = h.masked_scatter(is_image[..., None], image_features.to(h.dtype))
        return h

    def forward(
        self,
        token_ids: torch.Tensor,
        images: list[torch.Tensor] | None = None,
        *,
        image_features: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        caches: list[SequenceKVCache] | PagedBatch | None = None,
        last_only: bool = False,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        logits_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """token_ids (B, T) -> logits (B, T, vocab) float32 (or (B, 1, vocab) with last_only).

        Images are given either as pixels (`images`) or as already encoded features (`image_features`); they go
        to the [IMG] ids, or to the positions of `image_mask` (B, T) bool when given: generated tokens are plain
        tokens, so a decode step passes an all-False mask (see `no_images`).
        With `caches` (one per row), row b continues its sequence at position caches[b].length and the new
        keys/values are appended to it. Without, each row is a whole sequence from position 0: for packed
        training rows, `positions` (B, T) restarts at 0 per sample and `mask` (B, 1, T, T) bool (True = attend)
        keeps attention causal within each sample.
        With a `PagedBatch` as `caches`, token_ids (1, N) are the new tokens of many sequences packed in one
        row (model/kv_cache.py), at the batch's positions, their keys/values written to the paged pool.
        `logits_index` (K,) int64: only those positions go through the output head -> logits (B, K, vocab)
        (a prefill chunk that samples nothing needs none).
        """
        if images:
            if image_features is not None:
                raise ValueError("pass images or image_features, not both")
            image_features = self.encode_images(images)
        h = self.embed(token_ids, image_features, image_mask)  # (B, T, dim)
        b, t = token_ids.shape
        paged = isinstance(caches, PagedBatch)
        if paged:
            positions = caches.positions
        elif positions is None:
            starts = torch.tensor([c.length for c in caches] if caches else [0] * b, device=h.device)
            positions = starts[:, None] + torch.arange(t, device=h.device)  # (B, T)
        rope = decoder_rope(positions, self.config.text)  # (B, T, 1, hd/2)
        scaling = self.config.text.llama_4_scaling
        q_scale = llama4_query_scale(positions, scaling) if scaling else None  # (B, T, 1, 1)
        for layer in self.layers:
            h = layer(h, rope, caches, mask, q_scale)
        if caches and not paged:
            for cache in caches:
                cache.advance(t)
        if last_only:
            h = h[:, -1:]
        elif logits_index is not None:
            h = h[:, logits_index]  # (B, K, dim)
        return self.output(self.norm(h)).float()


def no_images(token_ids: torch.Tensor) -> torch.Tensor:
    """The image mask of generated tokens: (B, T) all False, whatever their ids (a sampled [IMG] included)."""
    return torch.zeros_like(token_ids, dtype=torch.bool)
