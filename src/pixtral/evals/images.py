"""Images as their original encoded bytes: sniffing the MIME type, data URLs, content hashes.

The reference harness re-encoded every image with PIL defaults (JPEG at quality 75, docs/evaluation-protocol.md §6 B14).
We never decode-and-re-encode: the bytes a dataset stores are the bytes the model receives.
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixtral.evals.errors import DatasetError

_SIGNATURES: list[tuple[bytes, str]] = [
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
]


def sniff_mime(data: bytes) -> str:
    """The MIME type of encoded image bytes, from their magic number (PNG if unknown)."""
    for magic, mime in _SIGNATURES:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/png"


@dataclass(frozen=True)
class ImageData:
    """One image: original bytes plus the MIME type they were sniffed as."""

    data: bytes
    mime: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def data_url(self) -> str:
        return f"data:{self.mime};base64," + base64.b64encode(self.data).decode("ascii")

    def summary(self) -> dict[str, Any]:
        """What reports store instead of the bytes."""
        return {"type": "image", "sha256": self.sha256, "mime": self.mime, "n_bytes": len(self.data)}


def to_image_data(value: Any, base_dir: Path | None = None) -> ImageData | None:
    """Turn a dataset cell into ImageData without re-encoding when bytes exist.

    Accepts the Hugging Face ``Image(decode=False)`` cell ``{"bytes": ..., "path": ...}``, raw bytes, a file path
    (relative to ``base_dir`` for local folders), or a PIL image (only PIL images *without* a source file are
    encoded, losslessly as PNG, because there are no original bytes to send).
    """
    if value is None:
        return None
    if isinstance(value, dict):
        raw = value.get("bytes")
        if raw:
            return ImageData(bytes(raw), sniff_mime(bytes(raw)))
        path = value.get("path")
        if path:
            return to_image_data(str(path), base_dir)
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        return ImageData(raw, sniff_mime(raw))
    if isinstance(value, (str, Path)):
        p = Path(value)
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        if not p.is_file():
            raise DatasetError(f"image file {p} does not exist; check the image paths in your local dataset")
        raw = p.read_bytes()
        return ImageData(raw, sniff_mime(raw))
    if hasattr(value, "save"):  # a decoded PIL image
        filename = getattr(value, "filename", "")
        if filename and Path(filename).is_file():
            raw = Path(filename).read_bytes()
            return ImageData(raw, sniff_mime(raw))
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return ImageData(buf.getvalue(), "image/png")
    raise DatasetError(f"cannot read an image from a value of type {type(value).__name__}")
