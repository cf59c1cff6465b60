"""Image builders shared by the prompt tests."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def noise_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A seeded random image, so that resizing and colour conversion really change the pixels."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "LA": 2, "L": 1, "CMYK": 4, "P": 1, "1": 1}[mode]
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    if mode == "RGBA":
        pixels[..., 3] = rng.choice(np.array([0, 128, 255], dtype=np.uint8), size=(height, width))
    if channels == 1:
        image = Image.fromarray(pixels[..., 0], mode="L")
        return image if mode == "L" else image.convert(mode)
    return Image.fromarray(pixels, mode=mode)


def encode(image: Image.Image, image_format: str = "PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **save_args)
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
