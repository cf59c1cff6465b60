"""Hugging Face (Llava, Mistral3) tensor names and the q/k permutation between RoPE layouts (docs/architecture.md, "Checkpoint formats").

Our in-memory convention is the Mistral native one: native names, q/k rows laid out for interleaved RoPE.
HF checkpoints come in two spellings — the hub's legacy `language_model.model.*` / `vision_tower.*` /
`multi_modal_projector.*` and transformers >= 5's `model.language_model.*` / `model.vision_tower.*` /
`model.multi_modal_projector.*` / `lm_head.*` — and their q/k rows are laid out for rotate_half RoPE.
"""

from __future__ import annotations

import re

import torch

from pixtral.config import PixtralConfig

# (native pattern, legacy HF pattern); {l} is a layer index.
_NAME_PAIRS: list[tuple[str, str]] = [
    ("tok_embeddings.weight", "language_model.model.embed_tokens.weight"),
    ("norm.weight", "language_model.model.norm.weight"),
    ("output.weight", "language_model.lm_head.weight"),
    ("layers.{l}.attention_norm.weight", "language_model.model.layers.{l}.input_layernorm.weight"),
    ("layers.{l}.ffn_norm.weight", "language_model.model.layers.{l}.post_attention_layernorm.weight"),
    ("layers.{l}.attention.wq.weight", "language_model.model.layers.{l}.self_attn.q_proj.weight"),
    ("layers.{l}.attention.wk.weight", "language_model.model.layers.{l}.self_attn.k_proj.weight"),
    ("layers.{l}.attention.wv.weight", "language_model.model.layers.{l}.self_attn.v_proj.weight"),
    ("layers.{l}.attention.wo.weight", "language_model.model.layers.{l}.self_attn.o_proj.weight"),
    ("layers.{l}.feed_forward.w1.weight", "language_model.model.layers.{l}.mlp.gate_proj.weight"),
    ("layers.{l}.feed_forward.w2.weight", "language_model.model.layers.{l}.mlp.down_proj.weight"),
    ("layers.{l}.feed_forward.w3.weight", "language_model.model.layers.{l}.mlp.up_proj.weight"),
    ("vision_encoder.patch_conv.weight", "vision_tower.patch_conv.weight"),
    ("vision_encoder.ln_pre.weight", "vision_tower.ln_pre.weight"),
    (
        "vision_encoder.transformer.layers.{l}.attention_norm.weight",
        "vision_tower.transformer.layers.{l}.attention_norm.weight",
    ),
    (
        "vision_encoder.transformer.layers.{l}.ffn_norm.weight",
        "vision_tower.transformer.layers.{l}.ffn_norm.weight",
    ),
    (
        "vision_encoder.transformer.layers.{l}.attention.wq.weight",
        "vision_tower.transformer.layers.{l}.attention.q_proj.weight",
    ),
    (
        "vision_encoder.transformer.layers.{l}.attention.wk.weight",
        "vision_tower.transformer.layers.{l}.attention.k_proj.weight",
    ),
    (
        "vision_encoder.transformer.layers.{l}.attention.wv.weight",
        "vision_tower.transformer.layers.{l}.attention.v_proj.weight",
    ),
    (
        "vision_encoder.transformer.layers.{l}.attention.wo.weight",
        "vision_tower.transformer.layers.{l}.attention.o_proj.weight",
    ),
    (
        "vision_encoder.transformer.layers.{l}.feed_forward.w1.weight",
        "vision_tower.transformer.layers.{l}.feed_forward.gate_proj.weight",
    ),
    (
        "vision_encoder.transformer.layers.{l}.feed_forward.w2.weight",
        "vision_tower.transformer.layers.{l}.feed_forward.down_proj.weight",
    ),
    (
        "vision_encoder.transformer.layers.{l}.feed_forward.w3.weight",
        "vision_tower.transformer.layers.{l}.feed_forward.up_proj.weight",
    ),
    ("vision_language_adapter.w_in.weight", "multi_modal_projector.linear_1.weight"),
    ("vision_language_adapter.w_in.bias", "multi_modal_projector.linear_1.bias"),
    ("vision_language_adapter.w_out.weight", "multi_modal_projector.linear_2.weight"),
    ("vision_language_adapter.w_out.bias", "multi_modal_projector.linear_2.bias"),
    # Mistral3 (Mistral Small 3.1+): the projector norm and the patch merger
    ("pre_mm_projector_norm.weight", "multi_modal_projector.norm.weight"),
    ("patch_merger.merging_layer.weight", "multi_modal_projector.patch_merger.merging_layer.weight"),
]

# transformers >= 5 in-memory spelling <- legacy hub spelling
_MODERN_PREFIXES = [
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
]


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(pattern).replace(r"\{l\}", r"(\d+)") + "$")


_TO_NATIVE = [(_compile(hf), native) for native, hf in _NAME_PAIRS]
_TO_HF = [(_compile(native), hf) for native, hf in _NAME_PAIRS]


def _translate(name: str, table: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, target in table:
        m = pattern.match(name)
        if m:
            return target.replace("{l}", m.group(1)) if m.groups() else target
    return None


def hf_to_native_name(name: str) -> str | None:
    """Either HF spelling -> native name; None for a name that is not part of Pixtral."""
    for modern, legacy in _MODERN_PREFIXES:
        if name.startswith(modern):
            name = legacy + name[len(modern) :]
            break
    return _translate(name, _TO_NATIVE)


def native_to_hf_name(name: str) -> str:
    """Native name -> the hub's legacy HF spelling (what transformers of every version loads)."""
    out = _translate(name, _TO_HF)
    if out is None:
        raise KeyError(f"no Hugging Face name for tensor {name!r}")
    return out


def rope_heads(name: str, config: PixtralConfig) -> tuple[int, int] | None:
    """(n_heads, head_dim) for the q/k weights whose rows the RoPE layouts order differently; else None."""
    if re.fullmatch(r"layers\.\d+\.attention\.wq\.weight", name):
        return config.text.n_heads, config.text.head_dim
    if re.fullmatch(r"layers\.\d+\.attention\.wk\.weight", name):
        return (
            config.text.n_kv_heads,
            config.text.head_dim,
        )  # kv heads for k (docs/architecture.md, "Checkpoint formats")
    if re.fullmatch(r"vision_encoder\.transformer\.layers\.\d+\.attention\.w[qk]\.weight", name):
        return config.vision.num_attention_heads, config.vision.head_dim
    return None


def interleaved_to_half(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Native q/k rows -> HF rows: within each head, row j <- 2j and row hd/2 + j <- 2j + 1."""
    return w.reshape(n_heads, head_dim // 2, 2, -1).transpose(1, 2).reshape(w.shape)


def half_to_interleaved(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """HF q/k rows -> native rows (the inverse of interleaved_to_half)."""
    return w.reshape(n_heads, 2, head_dim // 2, -1).transpose(1, 2).reshape(w.shape)
