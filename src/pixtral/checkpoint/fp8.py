"""FP8 checkpoints (Ministral 3, Devstral Small 2 releases): float8 e4m3 weights with one float scale per
tensor, dequantized on read to float32: W = W_fp8.float() * scale (docs/architecture.md, "FP8 checkpoints").

Scale tensor names, beside the weight they scale:
- native (params.json `quantization: {qformat_weight: fp8_e4m3, ...}`): `<module>.qscale_weight`, and
  `<module>.qscale_act` (a static activation scale: only for FP8 matmuls, ignored here);
- Hugging Face (`quantization_config: {quant_method: fp8, ...}`): `<module>.weight_scale_inv` (a multiplier
  despite its name) and `<module>.activation_scale` (ignored).
Only per-tensor scales are read: block-wise FP8 (DeepSeek-style weight_block_size) is refused by name.
"""

from __future__ import annotations

import torch

from pixtral.errors import CheckpointError

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
WEIGHT_SCALE_SUFFIXES = (".qscale_weight", ".weight_scale_inv")
ACTIVATION_SCALE_SUFFIXES = (".qscale_act", ".activation_scale", ".input_scale")


def scale_target(stored_name: str) -> str | None:
    """The stored name of the weight a weight-scale tensor scales, or None for any other tensor."""
    for suffix in WEIGHT_SCALE_SUFFIXES:
        if stored_name.endswith(suffix):
            return stored_name[: -len(suffix)] + ".weight"
    return None


def is_activation_scale(stored_name: str) -> bool:
    return stored_name.endswith(ACTIVATION_SCALE_SUFFIXES)


def dequantize(weight: torch.Tensor, scale: torch.Tensor, where: str) -> torch.Tensor:
    """float8 (N, K) weight and its one-element scale -> float32 (N, K) = weight * scale."""
    if scale.numel() != 1:
        raise CheckpointError(
            f"{where}: FP8 scale of shape {list(scale.shape)}; only per-tensor scales (one value) are supported"
        )
    return weight.to(torch.float32) * scale.to(torch.float32).reshape(())
