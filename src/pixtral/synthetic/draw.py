"""Drawing primitives shared by the tasks: fonts, colours, text boxes, shapes, image hashes.

Every primitive draws without anti-aliasing except text (FreeType), so a shape of colour C is exactly the set of
pixels of colour C: tests count shapes by connected components and read bars by pixel columns.
Text uses Pillow's built-in scalable font (``ImageFont.load_default(size=...)``, Aileron Regular, bundled with
Pillow >= 10.1), so the output depends on the Pillow/FreeType build only, never on installed system fonts.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, features

from pixtral.errors import ConfigError

RGB = tuple[int, int, int]

# Named colours for shapes and bars: far apart in RGB, none of them a background or text colour.
COLOURS: dict[str, RGB] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 80, 220),
    "yellow": (240, 200, 20),
    "orange": (245, 130, 20),
    "purple": (140, 50, 170),
    "pink": (240, 110, 180),
    "cyan": (20, 190, 200),
}
BACKGROUNDS: tuple[RGB, ...] = ((255, 255, 255), (248, 248, 244), (240, 244, 250), (250, 246, 236))
INK: tuple[RGB, ...] = ((0, 0, 0), (30, 30, 40), (20, 30, 70))  # text colours
GRID: RGB = (215, 215, 215)
AXIS: RGB = (60, 60, 60)
SHAPES = ("circle", "square", "triangle")

MIN_FONT = 6


@functools.lru_cache(maxsize=256)
def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font at ``size`` pixels (cached)."""
    if not features.check("freetype2"):
        raise ConfigError("pixtral.synthetic needs Pillow built with FreeType (pip install --force pillow)")
    return ImageFont.load_default(size=int(size))  # type: ignore[return-value]


def text_size(text: str, size: int) -> tuple[int, int]:
    """(width, height) of the ink box of ``text`` drawn at ``size``, from the drawing origin."""
    left, top, right, bottom = font(size).getbbox(text)
    return right, bottom


@dataclass(frozen=True)
class TextBox:
    """A string drawn at ``xy`` with ``size``; ``box`` is its layout box (x0, y0, x1, y1), exclusive ends."""

    text: str
    xy: tuple[int, int]
    size: int
    fill: RGB
    box: tuple[int, int, int, int]

    def as_dict(self) -> dict:
        return {"text": self.text, "xy": list(self.xy), "size": self.size, "fill": list(self.fill),
                "box": list(self.box)}  # fmt: skip


def draw_text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, size: int, fill: RGB) -> TextBox:
    w, h = text_size(text, size)
    draw.text(xy, text, font=font(size), fill=fill)
    x, y = xy
    return TextBox(text, (x, y), size, fill, (x, y, x + w, y + h))


def fit_font(text: str, max_width: int, size: int, min_size: int = MIN_FONT) -> int | None:
    """The largest size <= ``size`` at which ``text`` is at most ``max_width`` wide, or None below min_size."""
    while size >= min_size:
        if text_size(text, size)[0] <= max_width:
            return size
        size -= 1 if size < 16 else max(1, size // 8)
    return None


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], fill: RGB) -> None:
    """A filled shape in ``box`` (x0, y0, x1, y1, inclusive): a disc, a square or an upward triangle."""
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    elif kind == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {kind!r}")


def image_hash(image: Image.Image) -> str:
    """sha256 of the decoded pixels, size and mode (independent of how the image is encoded)."""
    h = hashlib.sha256()
    h.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()
