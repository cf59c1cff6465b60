"""Random initialisation for untrained models (`pixtral init`, tests, training from scratch)."""

import torch
from torch import nn

from pixtral.model.norm import RMSNorm


@torch.no_grad()
def init_random_weights_(
    model: nn.Module, seed: int = 0, std: float = 0.02, norm_jitter: float = 0.0
) -> nn.Module:
    """Normal(0, std) weights, zero biases, norm weights 1 (+ N(0, norm_jitter) to make tests sensitive)."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv2d)):
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std)
            if getattr(module, "bias", None) is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * std)
        elif isinstance(module, RMSNorm):
            module.weight.copy_(1.0 + torch.randn(module.weight.shape, generator=gen) * norm_jitter)
    return model
