"""The SiLU-gated feed-forward block shared by the vision encoder and the decoder: w2(silu(w1 x) * w3 x).

Without autograd the gate is activated and multiplied in place: the two element-wise results (in prefill,
T x hidden_dim each: 24 MB for 1066 tokens of the 'small' preset) are then never allocated. Fresh blocks that
size come from the kernel as zeroed 4 kB pages when glibc has returned the last ones (a page fault per page:
measured 8 -> 23 ms per op, bench/bench_swiglu.py); in place, the gate's own buffer is reused.

For inference w1 and w3 may be replaced by one layer of their stacked rows, `w13` (engine/fused_projections.py):
one weight read and one kernel call instead of two; the gate and up halves are views of its output.
"""

import torch
import torch.nn.functional as F
from torch import nn


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up
        self.w13: nn.Module | None = None  # [w1; w3] stacked, when fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w13 is not None:  # (..., dim) -> (..., 2 hidden_dim) -> two (..., hidden_dim) views
            gate, up = self.w13(x).chunk(2, dim=-1)
            return self.w2(F.silu(gate, inplace=True).mul_(up))
        gate = self.w1(x)  # (..., dim) -> (..., hidden_dim)
        if gate.requires_grad:  # training: autograd keeps silu's input, so no in-place ops
            return self.w2(F.silu(gate) * self.w3(x))
        return self.w2(F.silu(gate, inplace=True).mul_(self.w3(x)))
