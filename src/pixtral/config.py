"""Model configuration: dataclasses for the vision encoder, the adapter and the text decoder.

Built from either published format:
- Mistral native `params.json`: decoder fields at the top level, a `vision_encoder` object;
- Hugging Face `config.json`: `text_config`, `vision_config`, as LlavaForConditionalGeneration (Pixtral-12B,
  Pixtral-Large) or Mistral3ForConditionalGeneration (Mistral Small 3.1/3.2, Magistral, Ministral 3, Devstral
  Small 2) writes them.

The family's differences are fields (docs/architecture.md, "The Pixtral family"): the projector norm and the
2x2 patch merger (`spatial_merge_size`, `mm_projector_id`, `add_pre_mm_projector_layer_norm`), YaRN RoPE and
the llama-4 attention scaling of Ministral 3, tied embeddings.

Rules from the spec (architecture.md §1.2, §6.2, §8): the decoder's head_dim is read, never derived as
dim / n_heads when given (NeMo: 128 != 5120 / 32); `image_break_token_id` / `image_end_token_id` default to
12 / 13 when absent or negative; unknown keys are ignored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pixtral.errors import ConfigError


@dataclass(frozen=True)
class VisionConfig:
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 1024  # max image side in pixels
    patch_size: int = 16
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5  # hard-coded in the reference, not read from params.json
    image_token_id: int = 10
    image_break_token_id: int = 12
    image_end_token_id: int = 13
    adapter_bias: bool = True
    # Mistral Small 3.1+: RMSNorm over the ViT output (eps = the text norm eps), then a patch merger that turns
    # each spatial_merge_size^2 block of patches into one feature ("patch_merge"); "" = neither (Pixtral).
    add_pre_mm_projector_layer_norm: bool = False
    mm_projector_id: str = ""
    spatial_merge_size: int = 1

    @property
    def has_patch_merger(self) -> bool:
        return self.mm_projector_id == "patch_merge"

    @property
    def tokens_per_side_unit(self) -> int:
        """Pixels per [IMG] token along a side: patch_size, times spatial_merge_size with the merger."""
        return self.patch_size * (self.spatial_merge_size if self.has_patch_merger else 1)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_patches_per_side(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class YarnConfig:
    """YaRN RoPE extension (Ministral 3: factor 16 over an original 16384 positions). Field names are the
    Hugging Face rope_parameters'; params.json's `yarn` calls beta_fast "beta" and beta_slow "alpha"."""

    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    # True: rotations scaled by 0.1 ln(factor) + 1 (HF mscale_all_dim 0); Mistral's releases: False
    apply_scale: bool = False


@dataclass(frozen=True)
class Llama4Scaling:
    """Queries at position p are multiplied by 1 + beta * ln(1 + floor(p / original_max_position_embeddings))."""

    original_max_position_embeddings: int
    beta: float


@dataclass(frozen=True)
class TextConfig:
    dim: int = 5120
    n_layers: int = 40
    head_dim: int = 128
    hidden_dim: int = 14336
    n_heads: int = 32
    n_kv_heads: int = 8
    vocab_size: int = 131072
    norm_eps: float = 1e-5
    rope_theta: float = 1_000_000_000.0
    max_seq_len: int = 131072  # advertised context (128K)
    # the output matrix is the token embedding matrix (Ministral 3 3B); no output weight is stored
    tied_embeddings: bool = False
    yarn: YarnConfig | None = None
    llama_4_scaling: Llama4Scaling | None = None


@dataclass(frozen=True)
class PixtralConfig:
    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    bos_id: int = 1
    eos_id: int = 2

    # ---- Mistral native params.json -------------------------------------------------------------

    @classmethod
    def from_params_json(cls, params: dict[str, Any], source: str = "params.json") -> PixtralConfig:
        if not isinstance(params, dict):
            raise ConfigError(f"{source}: expected a JSON object at the top level")
        ve = params.get("vision_encoder")
        if not isinstance(ve, dict):
            raise ConfigError(f"{source}: no 'vision_encoder' object; this is not a Pixtral (vision) model")
        dim = _req(params, "dim", int, source)
        n_heads = _req(params, "n_heads", int, source)
        text = TextConfig(
            dim=dim,
            n_layers=_req(params, "n_layers", int, source),
            head_dim=_opt(params, "head_dim", int, source, dim // n_heads),
            hidden_dim=_req(params, "hidden_dim", int, source),
            n_heads=n_heads,
            n_kv_heads=_opt(params, "n_kv_heads", int, source, n_heads),
            vocab_size=_req(params, "vocab_size", int, source),
            norm_eps=_opt(params, "norm_eps", float, source, 1e-5),
            rope_theta=_opt(params, "rope_theta", float, source, 10000.0),
            max_seq_len=_opt(
                params,
                "max_seq_len",
                int,
                source,
                _opt(params, "max_position_embeddings", int, source, 131072),
            ),
            tied_embeddings=_opt(params, "tied_embeddings", bool, source, False),
            yarn=_native_yarn(params.get("yarn"), f"{source}: yarn"),
            llama_4_scaling=_native_llama4(params.get("llama_4_scaling"), f"{source}: llama_4_scaling"),
        )
        vsrc = f"{source}: vision_encoder"
        vision = VisionConfig(
            hidden_size=_req(ve, "hidden_size", int, vsrc),
            intermediate_size=_req(ve, "intermediate_size", int, vsrc),
            num_hidden_layers=_req(ve, "num_hidden_layers", int, vsrc),
            num_attention_heads=_req(ve, "num_attention_heads", int, vsrc),
            num_channels=_opt(ve, "num_channels", int, vsrc, 3),
            image_size=_req(ve, "image_size", int, vsrc),
            patch_size=_req(ve, "patch_size", int, vsrc),
            rope_theta=_opt(ve, "rope_theta", float, vsrc, 10000.0),
            image_token_id=_opt(ve, "image_token_id", int, vsrc, 10),
            image_break_token_id=_token_id(ve, "image_break_token_id", vsrc, 12),
            image_end_token_id=_token_id(ve, "image_end_token_id", vsrc, 13),
            adapter_bias=_opt(ve, "adapter_bias", bool, vsrc, True),
            add_pre_mm_projector_layer_norm=_opt(ve, "add_pre_mm_projector_layer_norm", bool, vsrc, False),
            mm_projector_id=_projector_id(ve.get("mm_projector_id"), vsrc),
            spatial_merge_size=_opt(ve, "spatial_merge_size", int, vsrc, 1),
        )
        return cls(text=text, vision=vision).validated(source)

    def to_params_json(self) -> dict[str, Any]:
        t, v = self.text, self.vision
        return {
            "dim": t.dim,
            "n_layers": t.n_layers,
            "head_dim": t.head_dim,
            "hidden_dim": t.hidden_dim,
            "n_heads": t.n_heads,
            "n_kv_heads": t.n_kv_heads,
            "rope_theta": t.rope_theta,
            "norm_eps": t.norm_eps,
            "vocab_size": t.vocab_size,
            "max_seq_len": t.max_seq_len,
            **({"tied_embeddings": True} if t.tied_embeddings else {}),
            **({"yarn": _yarn_to_native(t.yarn)} if t.yarn else {}),
            **(
                {
                    "llama_4_scaling": {
                        "original_max_position_embeddings": s.original_max_position_embeddings,
                        "beta": s.beta,
                    }
                }
                if (s := t.llama_4_scaling)
                else {}
            ),
            "vision_encoder": {
                "hidden_size": v.hidden_size,
                "num_channels": v.num_channels,
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "rope_theta": v.rope_theta,
                "intermediate_size": v.intermediate_size,
                "num_hidden_layers": v.num_hidden_layers,
                "num_attention_heads": v.num_attention_heads,
                "image_token_id": v.image_token_id,
                "image_break_token_id": v.image_break_token_id,
                "image_end_token_id": v.image_end_token_id,
                "adapter_bias": v.adapter_bias,
                **(
                    {
                        "add_pre_mm_projector_layer_norm": v.add_pre_mm_projector_layer_norm,
                        "mm_projector_id": v.mm_projector_id,
                        "spatial_merge_size": v.spatial_merge_size,
                    }
                    if v.has_patch_merger or v.add_pre_mm_projector_layer_norm
                    else {}
                ),
            },
        }

    # ---- Hugging Face config.json (Llava or Mistral3 ForConditionalGeneration) ---------------

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], source: str = "config.json") -> PixtralConfig:
        if not isinstance(cfg, dict):
            raise ConfigError(f"{source}: expected a JSON object at the top level")
        tc, vc = cfg.get("text_config"), cfg.get("vision_config")
        if not isinstance(tc, dict) or not isinstance(vc, dict):
            raise ConfigError(
                f"{source}: needs 'text_config' and 'vision_config' objects (a Llava or Mistral3 config)"
            )
        model_type = cfg.get("model_type", "llava")
        if model_type not in ("llava", "mistral3"):
            raise ConfigError(f"{source}: model_type {model_type!r} is not supported (llava or mistral3)")
        mistral3 = model_type == "mistral3"
        text_type = tc.get("model_type", "mistral")
        if text_type not in ("mistral", "ministral3"):
            raise ConfigError(
                f"{source}: text_config.model_type {text_type!r} is not supported (mistral or ministral3)"
            )
        tsrc, vsrc = f"{source}: text_config", f"{source}: vision_config"
        act = vc.get("hidden_act", "gelu")
        if act != "silu":
            # PixtralVisionConfig defaults to gelu; the real model is SiLU-gated (docs/architecture.md, "Pitfalls").
            raise ConfigError(f"{vsrc}: hidden_act is {act!r}; Pixtral's vision FFN needs 'silu'")
        proj_act = cfg.get("projector_hidden_act", "gelu")
        if proj_act != "gelu":
            raise ConfigError(
                f"{source}: projector_hidden_act is {proj_act!r}; Pixtral's adapter uses 'gelu'"
            )
        if (
            cfg.get("vision_feature_select_strategy", "full") != "full"
            or cfg.get("vision_feature_layer", -1) != -1
        ):
            raise ConfigError(
                f"{source}: Pixtral needs vision_feature_select_strategy='full' and vision_feature_layer=-1"
            )
        hidden = _req(tc, "hidden_size", int, tsrc)
        n_heads = _req(tc, "num_attention_heads", int, tsrc)
        head_dim = tc.get("head_dim")
        yarn, llama4 = _hf_rope_scaling(tc, tsrc)
        # transformers >= 5 reads the top-level key (Mistral3Config defaults it to true, LlavaConfig to
        # false) and falls back to text_config's; a missing key here means untied (every published config
        # that ties says so).
        tied = bool(cfg.get("tie_word_embeddings", False) or tc.get("tie_word_embeddings", False))
        text = TextConfig(
            dim=hidden,
            n_layers=_req(tc, "num_hidden_layers", int, tsrc),
            head_dim=int(head_dim) if head_dim is not None else hidden // n_heads,
            hidden_dim=_req(tc, "intermediate_size", int, tsrc),
            n_heads=n_heads,
            n_kv_heads=_opt(tc, "num_key_value_heads", int, tsrc, n_heads),
            vocab_size=_req(tc, "vocab_size", int, tsrc),
            norm_eps=_opt(tc, "rms_norm_eps", float, tsrc, 1e-5),
            rope_theta=_rope_theta(tc, tsrc, 1_000_000_000.0),
            max_seq_len=_opt(tc, "max_position_embeddings", int, tsrc, 131072),
            tied_embeddings=tied,
            yarn=yarn,
            llama_4_scaling=llama4,
        )
        if tc.get("sliding_window") not in (None, 0):
            raise ConfigError(
                f"{tsrc}: sliding_window={tc['sliding_window']}; Pixtral uses full attention (null)"
            )
        vhidden = _req(vc, "hidden_size", int, vsrc)
        vheads = _req(vc, "num_attention_heads", int, vsrc)
        vhead_dim = vc.get("head_dim")
        if vhead_dim is not None and int(vhead_dim) != vhidden // vheads:
            raise ConfigError(f"{vsrc}: head_dim {vhead_dim} != hidden_size / num_attention_heads")
        vision = VisionConfig(
            hidden_size=vhidden,
            intermediate_size=_req(vc, "intermediate_size", int, vsrc),
            num_hidden_layers=_req(vc, "num_hidden_layers", int, vsrc),
            num_attention_heads=vheads,
            num_channels=_opt(vc, "num_channels", int, vsrc, 3),
            image_size=_req(vc, "image_size", int, vsrc),
            patch_size=_req(vc, "patch_size", int, vsrc),
            rope_theta=_rope_theta(vc, vsrc, 10000.0),
            image_token_id=_opt(
                cfg, "image_token_index", int, source, _opt(cfg, "image_token_id", int, source, 10)
            ),
            image_break_token_id=_token_id(cfg, "image_break_token_id", source, 12),
            image_end_token_id=_token_id(cfg, "image_end_token_id", source, 13),
            # transformers' defaults: Llava true, Mistral3 false
            adapter_bias=_opt(cfg, "multimodal_projector_bias", bool, source, not mistral3),
            add_pre_mm_projector_layer_norm=mistral3,
            mm_projector_id="patch_merge" if mistral3 else "",
            spatial_merge_size=_opt(cfg, "spatial_merge_size", int, source, 2) if mistral3 else 1,
        )
        return cls(
            text=text,
            vision=vision,
            bos_id=_opt(tc, "bos_token_id", int, tsrc, 1),
            eos_id=_opt(tc, "eos_token_id", int, tsrc, 2),
        ).validated(source)

    def to_hf_config(self) -> dict[str, Any]:
        """A config.json that transformers loads (legacy and >=5 keys both set): Mistral3ForConditionalGeneration
        for the projector norm + patch merger shape, else LlavaForConditionalGeneration; the text model is
        Ministral3 with YaRN, else Mistral."""
        t, v = self.text, self.vision
        if v.has_patch_merger != v.add_pre_mm_projector_layer_norm:
            raise ConfigError(
                "Hugging Face has no class for a patch merger without the projector norm (or the reverse): "
                "keep this checkpoint in the native format"
            )
        if t.llama_4_scaling and (
            not t.yarn
            or t.llama_4_scaling.original_max_position_embeddings != t.yarn.original_max_position_embeddings
        ):
            raise ConfigError(
                "Hugging Face's Ministral3 needs YaRN with the same original length as the llama-4 scaling: "
                "keep this checkpoint in the native format"
            )
        mistral3 = v.has_patch_merger
        rope: dict[str, Any] = {"rope_theta": t.rope_theta, "rope_type": "default"}
        if t.yarn:
            rope = {
                "rope_type": "yarn",
                "rope_theta": t.rope_theta,
                "factor": t.yarn.factor,
                "original_max_position_embeddings": t.yarn.original_max_position_embeddings,
                "beta_fast": t.yarn.beta_fast,
                "beta_slow": t.yarn.beta_slow,
                "mscale": 1.0,
                "mscale_all_dim": 0.0 if t.yarn.apply_scale else 1.0,
                "llama_4_scaling_beta": t.llama_4_scaling.beta if t.llama_4_scaling else 0.0,
            }
        return {
            "architectures": [
                "Mistral3ForConditionalGeneration" if mistral3 else "LlavaForConditionalGeneration"
            ],
            "model_type": "mistral3" if mistral3 else "llava",
            "image_token_index": v.image_token_id,
            "image_token_id": v.image_token_id,
            "image_break_token_id": v.image_break_token_id,
            "image_end_token_id": v.image_end_token_id,
            "projector_hidden_act": "gelu",
            "multimodal_projector_bias": v.adapter_bias,
            "vision_feature_layer": -1,
            **({"spatial_merge_size": v.spatial_merge_size} if mistral3 else {}),
            **({} if mistral3 else {"vision_feature_select_strategy": "full", "image_seq_length": 1}),
            "tie_word_embeddings": t.tied_embeddings,
            "text_config": {
                "model_type": "ministral3" if t.yarn else "mistral",
                "hidden_size": t.dim,
                "intermediate_size": t.hidden_dim,
                "num_hidden_layers": t.n_layers,
                "num_attention_heads": t.n_heads,
                "num_key_value_heads": t.n_kv_heads,
                "head_dim": t.head_dim,
                "rms_norm_eps": t.norm_eps,
                "rope_theta": t.rope_theta,
                "rope_parameters": rope,
                "vocab_size": t.vocab_size,
                "max_position_embeddings": t.max_seq_len,
                "sliding_window": None,
                "hidden_act": "silu",
                "tie_word_embeddings": t.tied_embeddings,
                "bos_token_id": self.bos_id,
                "eos_token_id": self.eos_id,
            },
            "vision_config": {
                "model_type": "pixtral",
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_hidden_layers": v.num_hidden_layers,
                "num_attention_heads": v.num_attention_heads,
                "head_dim": v.head_dim,
                "num_channels": v.num_channels,
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "rope_theta": v.rope_theta,
                "rope_parameters": {"rope_theta": v.rope_theta, "rope_type": "axial"},
                "hidden_act": "silu",
            },
        }

    # ---- checks ---------------------------------------------------------------------------------

    def validated(self, source: str = "config") -> PixtralConfig:
        t, v = self.text, self.vision
        for name, value in [*asdict(t).items(), *asdict(v).items()]:
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and value <= 0
                and "token_id" not in name
            ):
                raise ConfigError(f"{source}: {name} must be positive, got {value}")
        if t.n_heads % t.n_kv_heads:
            raise ConfigError(
                f"{source}: n_heads ({t.n_heads}) must be a multiple of n_kv_heads ({t.n_kv_heads})"
            )
        if t.head_dim % 2 or v.head_dim % 4:
            raise ConfigError(
                f"{source}: RoPE needs an even decoder head_dim and a vision head_dim divisible by 4"
            )
        if v.hidden_size % v.num_attention_heads:
            raise ConfigError(f"{source}: vision hidden_size must be a multiple of num_attention_heads")
        if v.image_size % v.patch_size:
            raise ConfigError(f"{source}: vision image_size must be a multiple of patch_size")
        if v.has_patch_merger and v.image_size % v.tokens_per_side_unit:
            raise ConfigError(
                f"{source}: vision image_size must be a multiple of patch_size * spatial_merge_size "
                f"({v.tokens_per_side_unit})"
            )
        if v.spatial_merge_size != 1 and not v.has_patch_merger:
            raise ConfigError(
                f"{source}: spatial_merge_size={v.spatial_merge_size} needs mm_projector_id 'patch_merge'"
            )
        if t.yarn and (t.yarn.factor < 1 or t.yarn.original_max_position_embeddings <= 0):
            raise ConfigError(
                f"{source}: yarn needs factor >= 1 and a positive original_max_position_embeddings"
            )
        if t.llama_4_scaling and (
            t.llama_4_scaling.beta < 0 or t.llama_4_scaling.original_max_position_embeddings <= 0
        ):
            raise ConfigError(
                f"{source}: llama_4_scaling needs beta >= 0 and a positive original_max_position_embeddings"
            )
        for name in ("image_token_id", "image_break_token_id", "image_end_token_id"):
            if not 0 <= getattr(v, name) < t.vocab_size:
                raise ConfigError(f"{source}: {name}={getattr(v, name)} is outside the vocabulary")
        return self

    def num_parameters(self) -> dict[str, int]:
        t, v = self.text, self.vision
        layer = t.dim * t.head_dim * (2 * t.n_heads + 2 * t.n_kv_heads) + 3 * t.dim * t.hidden_dim + 2 * t.dim
        decoder = (1 if t.tied_embeddings else 2) * t.vocab_size * t.dim + t.n_layers * layer + t.dim
        vlayer = 4 * v.hidden_size**2 + 3 * v.hidden_size * v.intermediate_size + 2 * v.hidden_size
        vision = (
            v.num_channels * v.patch_size**2 * v.hidden_size + v.hidden_size + v.num_hidden_layers * vlayer
        )
        adapter = v.hidden_size * t.dim + t.dim * t.dim + (2 * t.dim if v.adapter_bias else 0)
        if v.add_pre_mm_projector_layer_norm:
            adapter += v.hidden_size
        if v.has_patch_merger:
            adapter += v.spatial_merge_size**2 * v.hidden_size**2
        return {
            "decoder": decoder,
            "vision_encoder": vision,
            "adapter": adapter,
            "total": decoder + vision + adapter,
        }


PRESETS: dict[str, PixtralConfig] = {
    # For tests and the untrained demo: the real tokenizer's vocabulary, everything else tiny.
    "tiny": PixtralConfig(
        text=TextConfig(dim=64, n_layers=2, head_dim=16, hidden_dim=128, n_heads=4, n_kv_heads=2),
        vision=VisionConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
        ),
    ),
    # About 1.1 B parameters: for benchmarks on a CPU.
    "small": PixtralConfig(
        text=TextConfig(dim=2048, n_layers=12, head_dim=128, hidden_dim=5632, n_heads=16, n_kv_heads=4),
        vision=VisionConfig(
            hidden_size=512, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=8
        ),
    ),
    # The exact shapes of Pixtral-12B-2409.
    "12b": PixtralConfig(),
}

# The family (issue #18; docs/architecture.md, "The Pixtral family"). The real decoder and vision shapes are
# those of transformers' Mistral3Config / Ministral3Config defaults and its params.json conversion tests.
_MISTRAL3_VISION = VisionConfig(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=1540,
    patch_size=14,
    adapter_bias=False,
    add_pre_mm_projector_layer_norm=True,
    mm_projector_id="patch_merge",
    spatial_merge_size=2,
)
_MINISTRAL3_ROPE = {
    "rope_theta": 1_000_000.0,
    "max_seq_len": 262144,
    "yarn": YarnConfig(factor=16.0, original_max_position_embeddings=16384),
    "llama_4_scaling": Llama4Scaling(original_max_position_embeddings=16384, beta=0.1),
}
_TINY_TEXT = TextConfig(dim=64, n_layers=2, head_dim=16, hidden_dim=128, n_heads=4, n_kv_heads=2)
_TINY_VISION = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
PRESETS.update(
    {
        # Mistral Small 3.1 / 3.2, Magistral Small 2506 / 2509: 24 B, projector norm + 2x2 patch merger
        "mistral-small-3.1": PixtralConfig(
            text=TextConfig(dim=5120, n_layers=40, head_dim=128, hidden_dim=32768, n_heads=32, n_kv_heads=8),
            vision=_MISTRAL3_VISION,
        ),
        # Ministral 3 (3B / 8B / 14B-2512): the Mistral Small vision side, a YaRN + llama-4-scaled decoder;
        # the 3B ties its output matrix to the embedding (docs/architecture.md, "The Pixtral family")
        "ministral-3-3b": PixtralConfig(
            text=TextConfig(
                dim=3072,
                n_layers=26,
                head_dim=128,
                hidden_dim=9216,
                n_heads=32,
                n_kv_heads=8,
                tied_embeddings=True,
                **_MINISTRAL3_ROPE,
            ),
            vision=_MISTRAL3_VISION,
        ),
        "ministral-3-8b": PixtralConfig(
            text=TextConfig(
                dim=4096,
                n_layers=34,
                head_dim=128,
                hidden_dim=14336,
                n_heads=32,
                n_kv_heads=8,
                **_MINISTRAL3_ROPE,
            ),
            vision=_MISTRAL3_VISION,
        ),
        "ministral-3-14b": PixtralConfig(
            text=TextConfig(
                dim=5120,
                n_layers=40,
                head_dim=128,
                hidden_dim=16384,
                n_heads=32,
                n_kv_heads=8,
                **_MINISTRAL3_ROPE,
            ),
            vision=_MISTRAL3_VISION,
        ),
        # tiny versions of each shape, with the real tokenizers' vocabularies
        "tiny-mistral3": PixtralConfig(text=_TINY_TEXT, vision=replace(_MISTRAL3_VISION, **_TINY_VISION)),
        "tiny-ministral3": PixtralConfig(
            text=replace(_TINY_TEXT, tied_embeddings=True, **_MINISTRAL3_ROPE),
            vision=replace(_MISTRAL3_VISION, **_TINY_VISION),
        ),
        # Pixtral-Large-Instruct-2411's layout: the 12B's structure, no adapter bias, SentencePiece v7 ids
        "tiny-pixtral-large": PixtralConfig(
            text=replace(_TINY_TEXT, vocab_size=32768, rope_theta=1_000_000.0),
            vision=VisionConfig(
                **_TINY_VISION, adapter_bias=False, image_break_token_id=14, image_end_token_id=15
            ),
        ),
    }
)
STREAMED_PRESETS = frozenset(
    {"12b", "mistral-small-3.1", "ministral-3-3b", "ministral-3-8b", "ministral-3-14b"}
)  # too big to build in memory


def family_member(config: PixtralConfig) -> str:
    """Which member of the Pixtral family this config has the shape of (the preset name when the dims
    are exactly a released model's)."""
    t, v = config.text, config.vision
    ids = {"image_token_id", "image_break_token_id", "image_end_token_id"}

    def same(a: PixtralConfig) -> bool:
        strip = lambda c: replace(c, vision=replace(c.vision, **{k: 0 for k in ids}))  # noqa: E731
        return strip(a) == strip(config)

    for name, released in [
        ("Pixtral-12B-2409", "12b"),
        ("Mistral Small 3.1/3.2, Magistral Small", "mistral-small-3.1"),
        ("Ministral 3 3B", "ministral-3-3b"),
        ("Ministral 3 8B", "ministral-3-8b"),
        ("Ministral 3 14B", "ministral-3-14b"),
    ]:
        if same(PRESETS[released]):
            return name
    if v.has_patch_merger:
        kind = "Ministral 3 / Devstral Small 2" if t.yarn else "Mistral Small 3.1+ / Magistral"
    elif t.vocab_size == 32768:
        kind = "Pixtral-Large"
    else:
        kind = "Pixtral-12B"
    extras = [x for x, on in [("tied embeddings", t.tied_embeddings), ("YaRN", t.yarn is not None)] if on]
    return f"{kind} shape (other dims{', ' + ', '.join(extras) if extras else ''})"


def preset(name: str) -> PixtralConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def with_text(config: PixtralConfig, **changes: Any) -> PixtralConfig:
    return replace(config, text=replace(config.text, **changes))


# ---- helpers for reading JSON dicts with errors that name the field ---------------------------


def _req(d: dict[str, Any], key: str, typ: type, source: str) -> Any:
    if key not in d or d[key] is None:
        raise ConfigError(f"{source}: missing required field '{key}'")
    return _cast(d[key], key, typ, source)


def _opt(d: dict[str, Any], key: str, typ: type, source: str, default: Any) -> Any:
    if d.get(key) is None:
        return default
    return _cast(d[key], key, typ, source)


def _cast(value: Any, key: str, typ: type, source: str) -> Any:
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: field '{key}' must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{source}: field '{key}' must be a number, got {value!r}")
    if typ is int and float(value) != int(value):
        raise ConfigError(f"{source}: field '{key}' must be an integer, got {value!r}")
    return typ(value)


def _token_id(d: dict[str, Any], key: str, source: str, default: int) -> int:
    value = _opt(d, key, int, source, default)
    return default if value < 0 else value  # some params.json carry -1 (docs/architecture.md, "Pitfalls")


def _rope_theta(d: dict[str, Any], source: str, default: float) -> float:
    params = d.get("rope_parameters")
    if isinstance(params, dict) and params.get("rope_theta") is not None:
        return _cast(params["rope_theta"], "rope_parameters.rope_theta", float, source)
    return _opt(d, "rope_theta", float, source, default)


def _projector_id(value: Any, source: str) -> str:
    if value in (None, "", "mlp"):  # "" and "mlp" (some params.json): the plain two-layer adapter
        return ""
    if value != "patch_merge":
        raise ConfigError(
            f"{source}: mm_projector_id={value!r} is not supported (use 'patch_merge' or omit it)"
        )
    return value


def _native_yarn(d: Any, source: str) -> YarnConfig | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected an object")
    return YarnConfig(
        factor=_req(d, "factor", float, source),
        original_max_position_embeddings=_req(d, "original_max_position_embeddings", int, source),
        beta_fast=_opt(d, "beta", float, source, 32.0),
        beta_slow=_opt(d, "alpha", float, source, 1.0),
        apply_scale=_opt(d, "apply_scale", bool, source, False),
    )


def _yarn_to_native(y: YarnConfig) -> dict[str, Any]:
    return {
        "factor": y.factor,
        "original_max_position_embeddings": y.original_max_position_embeddings,
        "beta": y.beta_fast,
        "alpha": y.beta_slow,
        "apply_scale": y.apply_scale,
    }


def _native_llama4(d: Any, source: str) -> Llama4Scaling | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected an object")
    return Llama4Scaling(
        original_max_position_embeddings=_req(d, "original_max_position_embeddings", int, source),
        beta=_req(d, "beta", float, source),
    )


def _hf_rope_scaling(tc: dict[str, Any], source: str) -> tuple[YarnConfig | None, Llama4Scaling | None]:
    """YaRN and the llama-4 scaling from `rope_parameters` (transformers >= 5) or `rope_scaling` (older)."""
    rp = tc.get("rope_parameters")
    if not isinstance(rp, dict) or "rope_type" not in rp and "type" not in rp:
        rp = tc.get("rope_scaling") if isinstance(tc.get("rope_scaling"), dict) else rp
    if not isinstance(rp, dict):
        return None, None
    src = f"{source}: rope_parameters"
    kind = rp.get("rope_type", rp.get("type", "default"))
    if kind == "default":
        return None, None
    if kind != "yarn":
        raise ConfigError(f"{src}: rope_type {kind!r} is not supported (use 'default' or 'yarn')")
    if rp.get("attention_factor") is not None or rp.get("truncate", True) is not True:
        raise ConfigError(
            f"{src}: attention_factor / truncate are not supported (Mistral's YaRN has neither)"
        )
    mscale, mscale_all_dim = rp.get("mscale"), rp.get("mscale_all_dim")
    if mscale and mscale_all_dim and mscale != mscale_all_dim:
        raise ConfigError(f"{src}: mscale {mscale} != mscale_all_dim {mscale_all_dim} is not supported")
    yarn = YarnConfig(
        factor=_req(rp, "factor", float, src),
        original_max_position_embeddings=_req(rp, "original_max_position_embeddings", int, src),
        beta_fast=_opt(rp, "beta_fast", float, src, 32.0),
        beta_slow=_opt(rp, "beta_slow", float, src, 1.0),
        # transformers: attention factor 1 when mscale and mscale_all_dim are both set (and equal), else
        # 0.1 ln(factor) + 1 (docs/architecture.md, "YaRN")
        apply_scale=not (mscale and mscale_all_dim),
    )
    beta = _opt(rp, "llama_4_scaling_beta", float, src, 0.0)
    llama4 = Llama4Scaling(yarn.original_max_position_embeddings, beta) if beta else None
    return yarn, llama4
