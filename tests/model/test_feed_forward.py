"""The SwiGLU computes in place without autograd (no fresh T x hidden tensors) and out of place with it."""

import torch
import torch.nn.functional as F

from pixtral.model.feed_forward import FeedForward


def _ffn() -> FeedForward:
    torch.manual_seed(0)
    return FeedForward(16, 48)


def _reference(ffn: FeedForward, x: torch.Tensor) -> torch.Tensor:
    return F.linear(F.silu(F.linear(x, ffn.w1.weight)) * F.linear(x, ffn.w3.weight), ffn.w2.weight)


def test_inference_in_place_matches_the_formula():
    ffn, x = _ffn(), torch.randn(2, 5, 16)
    with torch.inference_mode():
        got = ffn(x)
    with torch.no_grad():
        assert torch.equal(ffn(x), got)
        torch.testing.assert_close(got, _reference(ffn, x), rtol=0, atol=1e-6)


def test_training_keeps_autograd_correct():
    ffn, x = _ffn(), torch.randn(2, 5, 16, requires_grad=True)
    ffn(x).square().sum().backward()
    got = x.grad.clone()
    x.grad = None
    _reference(ffn, x).square().sum().backward()
    torch.testing.assert_close(got, x.grad, rtol=0, atol=1e-6)
