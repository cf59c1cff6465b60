"""A cap on the image tokens of one request: images are resized down before encoding until they fit.

A 1024×1024 image costs 4096 [IMG] tokens (4160 with breaks): a few of them fill a small machine's memory.
Like llama.cpp's --image-max-tokens, a request whose images would exceed the cap has all of its images
scaled by one common factor (aspect ratios kept) until the total fits. Images under the cap are untouched,
so their pixels stay bit-identical to mistral-common's.
"""

from __future__ import annotations

from mistral_common.protocol.instruct.chunk import ImageChunk
from mistral_common.tokens.tokenizers.image import ImageEncoder
from PIL import Image

from pixtral.errors import InputError


def image_tokens(encoder: ImageEncoder, image: Image.Image) -> int:
    """[IMG] tokens mistral-common gives this image (its own grid rule)."""
    cols, rows = encoder._image_to_num_tokens(image)
    return cols * rows


def fit_image_budget(chunks: list[ImageChunk], encoder: ImageEncoder, max_tokens: int) -> None:
    """Resize the chunks' images in place so their [IMG] tokens sum to at most max_tokens."""
    total = sum(image_tokens(encoder, c.image) for c in chunks)
    if total <= max_tokens:
        return
    if len(chunks) > max_tokens:
        raise InputError(
            f"{len(chunks)} images need at least {len(chunks)} image tokens; the cap is {max_tokens}"
        )
    originals = [c.image for c in chunks]
    scale = (max_tokens / total) ** 0.5
    while True:
        resized = [
            im.resize(
                (max(1, int(im.width * scale)), max(1, int(im.height * scale))), Image.Resampling.BICUBIC
            )
            for im in originals
        ]
        if sum(image_tokens(encoder, im) for im in resized) <= max_tokens:
            break
        scale *= 0.95
    for chunk, image in zip(chunks, resized, strict=True):
        chunk.image = image
