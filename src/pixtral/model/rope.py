"""Rotary position embeddings, in the native (mistral-inference) convention: interleaved pairs.

A head vector x of size d is read as d/2 pairs (x[2j], x[2j+1]); pair j is rotated by angle phi_j:
    (a, b) -> (a cos phi - b sin phi, a sin phi + b cos phi), i.e. (a + ib) * exp(i phi).
Angles and the rotation are computed in float32 and cast back (spec §1.4, §2.3, §7). Weights in the
Hugging Face layout are permuted to this convention when loaded (checkpoint/hf.py), so one convention
holds inside the model.
"""

import torch


def inverse_frequencies(head_dim: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    """1 / theta^(2k/d) for k = 0 .. d/2-1, float32, on `device`. (head_dim,) -> (head_dim // 2,)"""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))


def rope_1d_angles(positions: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """Decoder angles: position p, pair k -> p * inv_freq_k.  (T,) -> (T, head_dim // 2) float32"""
    inv = inverse_frequencies(head_dim, theta, positions.device)
    return positions.to(torch.float32)[:, None] * inv[None, :]


def rope_2d_angles(rows: torch.Tensor, cols: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """Vision angles for patches at (row, col): the first half of the pairs encode the row with the even
    base frequencies, the second half the column with the odd ones (spec §2.3; not the paper's figure).
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
