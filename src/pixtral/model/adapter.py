"""Vision -> language adapter: Linear(+bias) -> exact (erf) GELU -> Linear(+bias) (spec §3)."""

import torch
import torch.nn.functional as F
from torch import nn


class VisionLanguageAdapter(nn.Module):
    def __init__(self, vision_dim: int, text_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.w_in = nn.Linear(vision_dim, text_dim, bias=bias)
        self.w_out = nn.Linear(text_dim, text_dim, bias=bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # (n_patches, vision_dim) -> (n_patches, text_dim)
        return self.w_out(F.gelu(self.w_in(features), approximate="none"))
