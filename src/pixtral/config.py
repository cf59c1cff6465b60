"""Model configuration: dataclasses for the vision encoder, the adapter and the text decoder.

Built from either published format:
- Mistral native `params.json`: decoder fields at the top level, a `vision_encoder` object;
- Hugging Face `config.json` (LlavaForConditionalGeneration): `text_config`, `vision_config`.

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

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_patches_per_side(self) -> int:
        return self.image_size // self.patch_size


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
            max_seq_len=_opt(params, "max_seq_len", int, source, 131072),
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
        )
        _reject_unsupported_vision(ve, vsrc)
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
            },
        }

    # ---- Hugging Face config.json (LlavaForConditionalGeneration) -------------------------------

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], source: str = "config.json") -> PixtralConfig:
        if not isinstance(cfg, dict):
            raise ConfigError(f"{source}: expected a JSON object at the top level")
        tc, vc = cfg.get("text_config"), cfg.get("vision_config")
        if not isinstance(tc, dict) or not isinstance(vc, dict):
            raise ConfigError(f"{source}: needs 'text_config' and 'vision_config' objects (a Llava config)")
        tsrc, vsrc = f"{source}: text_config", f"{source}: vision_config"
        act = vc.get("hidden_act", "gelu")
        if act != "silu":
            # PixtralVisionConfig defaults to gelu; the real model is SiLU-gated (spec §8 item 17).
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
        )
        if tc.get("sliding_window") not in (None, 0):
            raise ConfigError(
                f"{tsrc}: sliding_window={tc['sliding_window']}; Pixtral uses full attention (null)"
            )
        if tc.get("tie_word_embeddings", False) or cfg.get("tie_word_embeddings", False):
            raise ConfigError(f"{source}: tie_word_embeddings is true; Pixtral has a separate output matrix")
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
            adapter_bias=_opt(cfg, "multimodal_projector_bias", bool, source, True),
        )
        return cls(
            text=text,
            vision=vision,
            bos_id=_opt(tc, "bos_token_id", int, tsrc, 1),
            eos_id=_opt(tc, "eos_token_id", int, tsrc, 2),
        ).validated(source)

    def to_hf_config(self) -> dict[str, Any]:
        """A config.json that transformers' LlavaForConditionalGeneration loads (legacy and >=5 keys both set)."""
        t, v = self.text, self.vision
        return {
            "architectures": ["LlavaForConditionalGeneration"],
            "model_type": "llava",
            "image_token_index": v.image_token_id,
            "image_break_token_id": v.image_break_token_id,
            "image_end_token_id": v.image_end_token_id,
            "projector_hidden_act": "gelu",
            "multimodal_projector_bias": v.adapter_bias,
            "vision_feature_layer": -1,
            "vision_feature_select_strategy": "full",
            "image_seq_length": 1,
            "tie_word_embeddings": False,
            "text_config": {
                "model_type": "mistral",
                "hidden_size": t.dim,
                "intermediate_size": t.hidden_dim,
                "num_hidden_layers": t.n_layers,
                "num_attention_heads": t.n_heads,
                "num_key_value_heads": t.n_kv_heads,
                "head_dim": t.head_dim,
                "rms_norm_eps": t.norm_eps,
                "rope_theta": t.rope_theta,
                "rope_parameters": {"rope_theta": t.rope_theta, "rope_type": "default"},
                "vocab_size": t.vocab_size,
                "max_position_embeddings": t.max_seq_len,
                "sliding_window": None,
                "hidden_act": "silu",
                "tie_word_embeddings": False,
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
        for name in ("image_token_id", "image_break_token_id", "image_end_token_id"):
            if not 0 <= getattr(v, name) < t.vocab_size:
                raise ConfigError(f"{source}: {name}={getattr(v, name)} is outside the vocabulary")
        return self

    def num_parameters(self) -> dict[str, int]:
        t, v = self.text, self.vision
        layer = t.dim * t.head_dim * (2 * t.n_heads + 2 * t.n_kv_heads) + 3 * t.dim * t.hidden_dim + 2 * t.dim
        decoder = 2 * t.vocab_size * t.dim + t.n_layers * layer + t.dim
        vlayer = 4 * v.hidden_size**2 + 3 * v.hidden_size * v.intermediate_size + 2 * v.hidden_size
        vision = (
            v.num_channels * v.patch_size**2 * v.hidden_size + v.hidden_size + v.num_hidden_layers * vlayer
        )
        adapter = v.hidden_size * t.dim + t.dim * t.dim + (2 * t.dim if v.adapter_bias else 0)
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
    return default if value < 0 else value  # some params.json carry -1 (spec §8 item 5)


def _rope_theta(d: dict[str, Any], source: str, default: float) -> float:
    params = d.get("rope_parameters")
    if isinstance(params, dict) and params.get("rope_theta") is not None:
        return _cast(params["rope_theta"], "rope_parameters.rope_theta", float, source)
    return _opt(d, "rope_theta", float, source, default)


def _reject_unsupported_vision(ve: dict[str, Any], source: str) -> None:
    # Fields of later Mistral VLMs that change the architecture; Pixtral-12B does not use them.
    if ve.get("spatial_merge_size", 1) != 1:
        raise ConfigError(
            f"{source}: spatial_merge_size={ve['spatial_merge_size']} is not supported (Pixtral-12B: 1)"
        )
    if ve.get("add_pre_mm_projector_layer_norm", False):
        raise ConfigError(f"{source}: add_pre_mm_projector_layer_norm is not supported (Pixtral-12B: false)")
    if ve.get("mm_projector_id", ""):
        raise ConfigError(f"{source}: mm_projector_id={ve['mm_projector_id']!r} is not supported")
