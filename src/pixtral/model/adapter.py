"""Vision -> language adapter: Linear(+bias) -> exact (erf) GELU -> Linear(+bias) (docs/architecture.md, "Adapter and merge"), and the patch
merger that Mistral Small 3.1+ puts before it (docs/architecture.md, "Patch merger")."""

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


class PatchMerger(nn.Module):
    """Each merge x merge block of an image's patches -> one feature: Linear(merge^2 * dim -> dim, no bias).

    The block is unfolded channel-major, as torch.nn.functional.unfold does: input index = channel * merge^2
    + position in the block (row-major). Concatenating the patch vectors instead is silently wrong."""

    def __init__(self, dim: int, merge: int) -> None:
        super().__init__()
        self.merge = merge
        self.merging_layer = nn.Linear(dim * merge * merge, dim, bias=False)

    def forward(self, features: torch.Tensor, grids: list[tuple[int, int]]) -> torch.Tensor:
        """Packed (sum r*c, dim) patch features of images with (r, c) patch grids, row-major per image
        -> (sum (r/m)*(c/m), dim) merged features, row-major per image."""
        m, d = self.merge, features.shape[-1]
        out, start = [], 0
        for i, (r, c) in enumerate(grids):
            if r % m or c % m:
                raise ValueError(
                    f"image {i}: a {r}x{c} patch grid cannot be merged in {m}x{m} blocks "
                    f"(image sides must be multiples of patch size x {m})"
                )
            x = features[start : start + r * c].view(r // m, m, c // m, m, d)  # (R, m, C, m, d)
            x = x.permute(0, 2, 4, 1, 3)  # (R, C, d, m, m): channel-major within the block
            out.append(x.reshape((r // m) * (c // m), d * m * m))  # (R*C, d*m*m)
            start += r * c
        return self.merging_layer(torch.cat(out))
