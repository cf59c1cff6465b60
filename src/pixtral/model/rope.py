"""Rotary position embeddings, in the native (mistral-inference) convention: interleaved pairs.

A head vector x of size d is read as d/2 pairs (x[2j], x[2j+1]); pair j is rotated by angle phi_j:
    (a, b) -> (a cos phi - b sin phi, a sin phi + b cos phi), i.e. (a + ib) * exp(i phi).
Angles and the rotation are computed in float32 and cast back (docs/architecture.md, "One RoPE convention inside the model", "Numerics"). Weights in the
Hugging Face layout are permuted to this convention when loaded (checkpoint/hf_names.py), so one convention
holds inside the model.
"""

import math

import torch

from pixtral.config import Llama4Scaling, TextConfig, YarnConfig


def inverse_frequencies(head_dim: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    """1 / theta^(2k/d) for k = 0 .. d/2-1, float32, on `device`. (head_dim,) -> (head_dim // 2,)"""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))


def rope_1d_angles(positions: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """Decoder angles: position p, pair k -> p * inv_freq_k.  (T,) -> (T, head_dim // 2) float32"""
    inv = inverse_frequencies(head_dim, theta, positions.device)
    return positions.to(torch.float32)[:, None] * inv[None, :]


def yarn_inverse_frequencies(
    head_dim: int, theta: float, yarn: YarnConfig, device: torch.device | None = None
) -> torch.Tensor:
    """YaRN (arXiv 2309.00071) as transformers computes it (docs/architecture.md, "YaRN"): pairs that turn
    more than beta_fast times over the original length keep their frequency, pairs that turn fewer than
    beta_slow times are divided by `factor`, with a linear ramp between (bounds floored / ceiled).
    (head_dim,) -> (head_dim // 2,) float32"""
    base = inverse_frequencies(head_dim, theta, device)

    def pair_index(rotations: float) -> float:
        """The (fractional) pair that turns `rotations` times over the original length."""
        n = yarn.original_max_position_embeddings / (rotations * 2 * math.pi)
        return head_dim * math.log(n) / (2 * math.log(theta))

    low = max(math.floor(pair_index(yarn.beta_fast)), 0)
    high = min(math.ceil(pair_index(yarn.beta_slow)), head_dim - 1)
    if low == high:
        high += 0.001
    pairs = torch.arange(head_dim // 2, dtype=torch.float32, device=device)
    ramp = ((pairs - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (original frequency), 0: interpolate (frequency / factor)
    return (base / yarn.factor) * (1 - keep) + base * keep


def yarn_attention_factor(yarn: YarnConfig) -> float:
    """The magnitude of the rotations: 1 for Mistral's YaRN, 0.1 ln(factor) + 1 with apply_scale."""
    if not yarn.apply_scale or yarn.factor <= 1:
        return 1.0
    return 0.1 * math.log(yarn.factor) + 1.0


def decoder_rope(positions: torch.Tensor, config: TextConfig) -> torch.Tensor:
    """The decoder's rotation table for integer positions: plain RoPE, or YaRN when configured.
    positions (...,) -> complex64 (..., 1, head_dim // 2)"""
    if config.yarn is None:
        angles = rope_1d_angles(positions.reshape(-1), config.head_dim, config.rope_theta)
        return rope_table(angles.view(*positions.shape, -1))
    inv = yarn_inverse_frequencies(config.head_dim, config.rope_theta, config.yarn, positions.device)
    angles = positions.to(torch.float32)[..., None] * inv  # (..., head_dim // 2)
    magnitude = yarn_attention_factor(config.yarn)
    return torch.polar(torch.full_like(angles, magnitude), angles).unsqueeze(-2)


def llama4_query_scale(positions: torch.Tensor, scaling: Llama4Scaling) -> torch.Tensor:
    """Llama-4 / Ministral 3 attention temperature: 1 + beta * ln(1 + floor(p / original)), float32.
    positions (...,) -> (..., 1, 1), broadcast over heads and head_dim."""
    blocks = torch.floor(positions.to(torch.float32) / scaling.original_max_position_embeddings)
    return (1 + scaling.beta * torch.log(1 + blocks))[..., None, None]


def rope_2d_angles(rows: torch.Tensor, cols: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """Vision angles for patches at (row, col): the first half of the pairs encode the row with the even
    base frequencies, the second half the column with the odd ones (docs/architecture.md, "Vision encoder"; not the paper's figure).
    (N,), (N,) -> (N, head_dim // 2) float32
    """
    base = inverse_frequencies(head_dim, theta, rows.device)  # (head_dim // 2,)
    freqs_h = rows.to(torch.float32)[:, None] * base[None, 0::2]  # (N, head_dim // 4)
    freqs_w = cols.to(torch.float32)[:, None] * base[None, 1::2]  # (N, head_dim // 4)
    return torch.cat([freqs_h, freqs_w], dim=-1)


def rope_table(angles: torch.Tensor) -> torch.Tensor:
    """(..., T, d/2) angles -> complex64 rotations exp(i * angle) of shape (..., T, 1, d/2), broadcast over heads."""
    return torch.polar(torch.ones_like(angles), angles).unsqueeze(-2)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs as complex numbers (a + ib) * exp(i * phi), in float32 (as mistral-inference).
    x: (B, T, n_heads, d) or (T, n_heads, d); rope: (..., T, 1, d/2) complex64 -> same shape and dtype as x.
    One complex multiply on contiguous memory: ~50x faster on CPU than rotating strided halves."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (..., d/2) complex
    return torch.view_as_real(pairs * rope).flatten(-2).to(x.dtype)
