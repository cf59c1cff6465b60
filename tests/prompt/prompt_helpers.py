"""Image builders shared by the prompt tests."""

from __future__ import annotations

import base64
import io
import struct
import zlib

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


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's calling card)."""
    data = bytearray(encode(Image.new("L", (1, 1))))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)
