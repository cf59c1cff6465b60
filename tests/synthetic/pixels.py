"""Independent readers of the generated pixels: colour masks, connected components, shape classes, text."""

from __future__ import annotations

from collections import deque

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def mask(image: Image.Image, rgb) -> np.ndarray:
    return (np.asarray(image.convert("RGB")) == np.array(rgb, dtype=np.uint8)).all(axis=-1)


def components(m: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean mask, as arrays of (y, x) pixels (a plain BFS, no scipy)."""
    seen = np.zeros_like(m, dtype=bool)
    h, w = m.shape
    out = []
    for y0, x0 in zip(*np.nonzero(m), strict=True):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, pixels = deque([(y0, x0)]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and m[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        out.append(np.array(pixels))
    return out


def classify(pixels: np.ndarray) -> str:
    """circle / square / triangle from how much of its bounding box a filled shape covers."""
    ys, xs = pixels[:, 0], pixels[:, 1]
    fill = len(pixels) / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    return "square" if fill > 0.95 else "circle" if fill > 0.65 else "triangle"


def shapes_in(image: Image.Image, palette: dict) -> list[tuple[str, str, np.ndarray]]:
    """(colour name, shape class, pixels) of every shape of a palette colour."""
    out = []
    for name, rgb in palette.items():
        for comp in components(mask(image, rgb)):
            out.append((name, classify(comp), comp))
    return out


def render_text(size_wh, background, text: str, xy, font_size: int, fill) -> Image.Image:
    """The string drawn alone with Pillow's own bundled font (not the generator's helpers)."""
    image = Image.new("RGB", size_wh, tuple(background))
    ImageDraw.Draw(image).text(tuple(xy), text, font=ImageFont.load_default(size=font_size), fill=tuple(fill))
    return image


def region(image: Image.Image, box, pad: int = 1) -> np.ndarray:
    x0, y0, x1, y1 = box
    a = np.asarray(image.convert("RGB"))
    return a[max(0, y0 - pad) : y1 + pad, max(0, x0 - pad) : x1 + pad]
