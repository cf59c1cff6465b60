"""The ablation's baseline vision front end: every image resized to one fixed square, learned absolute
position embeddings instead of RoPE-2D (the design Pixtral-ViT is compared against in the paper, §4.4).

Everything else is the demo model's: the same patch convolution, blocks, adapter and decoder. Only the
position signal and the input resolution change:

- images are resized to SIDE x SIDE *before* tokenization (`resize_image`, `resize_jsonl`), so
  mistral-common writes the square's R x C `[IMG]` block and the prompt matches the features;
- `FixedResolutionEncoder` adds a learned (grid x grid, hidden) table to the patch embeddings (row-major,
  the patch at (r, c) takes row r * grid + c) and runs the blocks with RoPE switched off (zero angles, an
  exact identity rotation). The table adds grid^2 * hidden parameters (64 x 64 = 4,096 at 128 px, 0.26%
  of the demo model).

A model with this encoder is saved as a native checkpoint with one extra tensor, `vision_encoder.pos_embed`;
`load_fixed_resolution` reads it back (the stock loader would reject the extra tensor, on purpose).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from pixtral.config import PixtralConfig, VisionConfig
from pixtral.model.pixtral import Pixtral
from pixtral.model.rope import rope_table
from pixtral.model.vision_encoder import VisionEncoder

SIDE = 128  # the baseline's square, in pixels (8 x 8 patches of 16)
POS_NAME = "vision_encoder.pos_embed"


class FixedResolutionEncoder(VisionEncoder):
    """Pixtral-ViT blocks with a learned absolute position table and no RoPE-2D."""

    def __init__(self, config: VisionConfig, side: int = SIDE, std: float = 0.02, seed: int = 0) -> None:
        super().__init__(config)
        if side % config.patch_size:
            raise ValueError(f"side {side} must be a multiple of the patch size {config.patch_size}")
        self.side = side
        self.grid = side // config.patch_size
        gen = torch.Generator().manual_seed(seed)
        table = torch.randn(self.grid * self.grid, config.hidden_size, generator=gen) * std
        self.pos_embed = nn.Parameter(table)  # (grid * grid, hidden)

    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        """images: list of (C, H_i, W_i), at most side x side -> packed features (N, hidden_size)."""
        layout = self.layout(images)
        for i, (r, c) in enumerate(layout.grids):
            if r > self.grid or c > self.grid:
                raise ValueError(
                    f"image {i}: {r}x{c} patches exceed the {self.grid}x{self.grid} position table; resize "
                    f"images to {self.side}x{self.side} first (pixtral.demo.fixed_resolution.resize_image)"
                )
        dtype = self.patch_conv.weight.dtype
        patches = [
            self.patch_conv(img.to(dtype)[None]).flatten(2)[0].T  # (C, H, W) -> (h*w, hidden), row-major
            for img in images
        ]
        rows, cols = layout.positions(patches[0].device)  # (N,), (N,)
        x = torch.cat(patches) + self.pos_embed[rows * self.grid + cols].to(dtype)  # (N, hidden)
        x = self.ln_pre(x)
        zero = torch.zeros(x.shape[0], self.config.head_dim // 2, device=x.device)
        rope = rope_table(zero)  # exp(i * 0) = 1: no rotation
        for layer in self.transformer.layers:
            x = layer(x, rope, layout)
        return x


def fixed_resolution_model(config: PixtralConfig, side: int = SIDE, seed: int = 0) -> Pixtral:
    """A Pixtral whose vision encoder is the fixed-resolution baseline (random position table)."""
    model = Pixtral(config)
    model.vision_encoder = FixedResolutionEncoder(config.vision, side, seed=seed)
    return model


def swap_in_fixed_encoder(model: Pixtral, side: int = SIDE, seed: int = 0) -> Pixtral:
    """Replace `model`'s encoder by the baseline, keeping the patch conv, ln_pre and block weights."""
    old = model.vision_encoder
    new = FixedResolutionEncoder(model.config.vision, side, seed=seed).to(old.patch_conv.weight.device)
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    if missing != ["pos_embed"] or unexpected:
        raise RuntimeError(f"unexpected encoder state: missing {missing}, unexpected {unexpected}")
    model.vision_encoder = new
    return model


def load_fixed_resolution(folder: str | Path, side: int = SIDE) -> Pixtral:
    """A native checkpoint folder written from a fixed-resolution model -> the model, float32, eval mode."""
    folder = Path(folder)
    config = PixtralConfig.from_params_json(json.loads((folder / "params.json").read_text()))
    model = fixed_resolution_model(config, side)
    state = {k: v.float() for k, v in load_file(str(folder / "consolidated.safetensors")).items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


# ---- the baseline's preprocessing: resize before tokenization ------------------------------------


def resize_image(image: Image.Image, side: int = SIDE) -> Image.Image:
    """Any image -> side x side RGB (aspect ratio not kept, as a fixed-resolution encoder does)."""
    return image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)


def resize_jsonl(src: str | Path, dst_dir: str | Path, side: int = SIDE, name: str | None = None) -> Path:
    """Copy a JSONL conversation file with every image resized to side x side (PNGs under dst_dir/images)."""
    src, dst_dir = Path(src), Path(dst_dir)
    (dst_dir / "images").mkdir(parents=True, exist_ok=True)
    out = dst_dir / (name or src.name)
    with src.open() as f, out.open("w") as g:
        for line in f:
            if not line.strip():
                continue
            row: dict[str, Any] = json.loads(line)
            for message in row["messages"]:
                if not isinstance(message["content"], list):
                    continue
                for part in message["content"]:
                    if part.get("type") != "image_url":
                        continue
                    rel = part["image_url"]["url"]
                    target = Path("images") / Path(rel).name
                    if not (dst_dir / target).exists():
                        with Image.open(src.parent / rel) as im:
                            resize_image(im, side).save(dst_dir / target)
                    part["image_url"]["url"] = str(target)
            g.write(json.dumps(row) + "\n")
    return out
