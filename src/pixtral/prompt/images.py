"""Image sources -> validated, fully decoded PIL images.

Sizes are checked before anything is decoded: the byte count first (only where the caller sets a byte limit:
a server does, for what it receives), then the pixel count that the file's header declares (a 50-byte PNG can
declare 100 000 x 100 000 pixels). The pixel limit is the decompression-bomb guard and always applies; a
user's own file is bounded by it alone (a scanned page or a 16-bit TIFF easily exceeds 20 MiB). Pillow's
own DecompressionBombWarning is silenced: every image decoded here has passed `max_pixels` first, so the
warning could only repeat (or contradict) that decision on stderr. Only then is the image decoded, all of
it, so a truncated file fails here and not deep inside preprocessing.

The image is returned as PIL decoded it: no EXIF orientation, no mode conversion. mistral-common does the
RGB conversion (transparency -> white) and the resize itself, and it does not apply EXIF orientation
either, so doing it here would change the pixels and, for rotated photos, the token count.

Which sources may be read at all is a `MediaPolicy`: the one place that dispatches on a URL's scheme. The
CLI, the Python API and training use `LOCAL_MEDIA` (any local file, no downloads); the server builds its own
(serve/media.py: local files only below configured directories, http(s) only through its SSRF-guarded
fetcher, a byte limit). A source the policy refuses raises `MediaRefused`, whose `reason` the server answers
as its error code.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pixtral.errors import InputError

ImageSource = str | bytes | bytearray | Path | Image.Image
FetchRemote = Callable[
    [str], bytes
]  # url -> bytes; raises InputError (MediaRefused) when it refuses or fails

MiB = 1024 * 1024

# PIL names the formats it reads; MPO is the multi-picture JPEG many cameras write.
_FORMAT_ALIASES = {"MPO": "JPEG"}
_URL_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*):")  # RFC 3986; one letter is a Windows drive

warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # see the module docstring


@dataclass(frozen=True)
class ImageLimits:
    """What an image may be. Checked before decoding, so an oversized image costs nothing."""

    # of the encoded data (for a data: URL, of the decoded base64 payload); None: no byte limit, the pixel
    # count bounds the image (the default: a user's own file). A server sets one for what it receives.
    max_bytes: int | None = None
    max_pixels: int = 50_000_000  # width * height as declared by the file's header
    allowed_formats: frozenset[str] = field(
        default_factory=lambda: frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"})
    )  # PIL's format names; MPO (multi-picture JPEG) counts as JPEG

    def __post_init__(self) -> None:
        if (self.max_bytes is not None and self.max_bytes <= 0) or self.max_pixels <= 0:
            raise ValueError(f"image limits must be positive, got {self.max_bytes=} and {self.max_pixels=}")
        object.__setattr__(self, "allowed_formats", frozenset(f.upper() for f in self.allowed_formats))


DEFAULT_LIMITS = ImageLimits()


class MediaRefused(InputError):
    """The media policy refuses this source (as opposed to a source that is broken). `reason` names the rule:
    local_media_disabled, local_media_forbidden, remote_media_disabled, remote_media_refused, invalid_image."""

    reason = "invalid_image"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


@dataclass(frozen=True)
class MediaPolicy:
    """Which image sources may be read, and what an image may be. `data:` URLs (of an image/* type) are
    always allowed; local paths and `file://` URLs as `local_roots` says; `http(s)://` URLs only through
    `fetch_remote`, which owns timeouts and the address guard; any other scheme is refused."""

    limits: ImageLimits = DEFAULT_LIMITS
    # None: any local file (the user's own machine); (): no local file; else only files below these
    # directories, symlinks resolved first.
    local_roots: tuple[Path, ...] | None = None
    fetch_remote: FetchRemote | None = None  # None: http(s) URLs are refused

    def __post_init__(self) -> None:
        if self.local_roots is not None:
            object.__setattr__(
                self, "local_roots", tuple(Path(os.path.realpath(r)) for r in self.local_roots)
            )

    @property
    def schemes(self) -> frozenset[str]:
        """The URL schemes this policy reads ("" stands for a plain path)."""
        local = {"", "file"} if self.local_roots != () else set()
        remote = {"http", "https"} if self.fetch_remote is not None else set()
        return frozenset({"data"} | local | remote)

    def accepted(self) -> str:
        """The sources this policy reads, for error messages."""
        kinds = ["a data:image/...;base64 URL"]
        if self.local_roots is None:
            kinds.append("a local path or file:// URL")
        elif self.local_roots:
            kinds.append(f"a file below {', '.join(str(r) for r in self.local_roots)}")
        if self.fetch_remote is not None:
            kinds.append("an http(s):// URL")
        return ", ".join(kinds[:-1]) + " or " + kinds[-1] if len(kinds) > 1 else kinds[0]


LOCAL_MEDIA = MediaPolicy()  # the CLI's, the Python API's and training's: the user's own files, no downloads


def url_scheme(url: str) -> str:
    """The lower-case scheme of a URL, or "" for a path (a one-letter scheme is a Windows drive: "C:\\x")."""
    match = _URL_SCHEME.match(url)
    return match.group(1).lower() if match and len(match.group(1)) > 1 else ""


def load_image(source: ImageSource, media: MediaPolicy = LOCAL_MEDIA) -> Image.Image:
    """Load one image from a `data:` URL, a local path or `file://` URL, raw bytes, a PIL image, or an
    `http(s)://` URL, as far as `media` allows. Its limits apply to encoded sources; a PIL image is only
    checked to be non-empty and fully decoded.

    Raises MediaRefused when the policy refuses the source, InputError when the source cannot be read, is
    too large, is not an allowed format, or does not decode completely.
    """
    limits = media.limits
    if isinstance(source, Image.Image):
        return _check_pil_image(source)
    if isinstance(source, (bytes, bytearray)):
        return decode_image_bytes(bytes(source), limits, what="the image data")
    if isinstance(source, Path):
        return _load_path(source, media)
    if not isinstance(source, str):
        raise InputError(
            f"an image must be a data: URL, a path, a file:// or http(s):// URL, bytes or a PIL image, "
            f"not {type(source).__name__}"
        )
    if not source:
        raise InputError(f"the image URL is empty: send {media.accepted()}")

    scheme = url_scheme(source)
    if scheme == "data":
        return decode_image_bytes(_data_url_payload(source, limits), limits, what="the data: URL")
    if scheme == "file":
        return _load_path(Path(urllib.request.url2pathname(urllib.parse.urlsplit(source).path)), media)
    if scheme in ("http", "https"):
        return _load_remote(source, media)
    if scheme:
        raise MediaRefused(
            f"unsupported image URL scheme {scheme!r} in {_shorten(source)}: send {media.accepted()}"
        )
    return _load_path(Path(source), media)


def decode_image_bytes(data: bytes, limits: ImageLimits, what: str = "the image") -> Image.Image:
    """Check the size, header and format of an encoded image, then decode it fully."""
    _check_bytes(len(data), limits, what)
    if not data:
        raise InputError(f"{what} is empty: send the bytes of a {_formats(limits)} image")
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as e:
        raise InputError(f"{what} declares too many pixels ({e}): send a smaller image") from e
    except UnidentifiedImageError as e:  # PIL's message only names its file object: "<_io.BytesIO ...>"
        raise InputError(
            f"{what} is not a readable image (an unknown format, or truncated): send a complete "
            f"{_formats(limits)} file"
        ) from e
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(
            f"{what} is not a readable image, or is truncated ({_reason(e)}): "
            f"send a complete {_formats(limits)} file"
        ) from e

    image_format = _FORMAT_ALIASES.get(image.format or "", image.format or "unknown")
    if image_format not in limits.allowed_formats:
        raise InputError(f"{what} is a {image_format} image; allowed formats are {_formats(limits)}")
    _check_pixels(image.size, limits, what)
    try:
        image.load()  # decode everything now: truncated or corrupt data fails here
    except Image.DecompressionBombError as e:
        raise InputError(f"{what} declares too many pixels ({e}): send a smaller image") from e
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        raise InputError(
            f"{what} could not be decoded ({_reason(e)}): the file is truncated or corrupt, send it again"
        ) from e
    return image


def _check_pil_image(image: Image.Image) -> Image.Image:
    """A PIL image is taken as the caller made it: the limits guard encoded data, and whoever built the
    image (the server, with its own limits) has accepted its size. It is only checked to be non-empty and
    decoded completely."""
    what = "the PIL image"
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InputError(f"{what} has no pixels ({width}x{height}): send a non-empty image")
    try:
        image.load()  # an Image.open() result may still be lazy
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise InputError(f"{what} could not be decoded ({_reason(e)}): the file behind it is corrupt") from e
    return image


def _check_bytes(n_bytes: int, limits: ImageLimits, what: str) -> None:
    if limits.max_bytes is not None and n_bytes > limits.max_bytes:
        raise InputError(
            f"{what} is {_mb(n_bytes)}, more than the {_mb(limits.max_bytes)} limit: send a smaller image"
        )


def _check_pixels(size: tuple[int, int], limits: ImageLimits, what: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InputError(f"{what} has no pixels ({width}x{height}): send a non-empty image")
    if width * height > limits.max_pixels:
        raise InputError(
            f"{what} is {width}x{height} = {width * height:,} pixels, more than the {limits.max_pixels:,} "
            "pixel limit: downscale it (the model sees at most 1024x1024 anyway)"
        )


def _data_url_payload(url: str, limits: ImageLimits) -> bytes:
    header, comma, payload = url.partition(",")
    if not header.lower().startswith("data:image/"):
        raise MediaRefused(
            f"the data: URL is not an image (it starts {header[:40]!r}): "
            "send data:image/png;base64,... or data:image/jpeg;base64,..."
        )
    if not comma:
        raise InputError(f"the data: URL {_shorten(url)} has no ',' before its payload")
    if not header.lower().endswith(";base64"):
        raise InputError(
            f"the data: URL {_shorten(url)} is not base64-encoded: use data:image/png;base64,<base64 bytes>"
        )
    payload = "".join(payload.split())  # tolerate line breaks in the base64 text
    _check_bytes(len(payload) // 4 * 3, limits, "the data: URL's image")  # before decoding the base64
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"the data: URL {_shorten(url)} holds invalid base64 ({e})") from e


def _load_path(path: Path, media: MediaPolicy) -> Image.Image:
    """A local file, if the policy allows it."""
    limits = media.limits
    what = f"the image file {str(path)!r}"
    if media.local_roots == ():
        raise MediaRefused(f"local image files are disabled: send {media.accepted()}", "local_media_disabled")
    if media.local_roots is not None:
        try:
            path = Path(os.path.realpath(path))  # symlinks and ".." resolved before the check
        except (ValueError, OSError) as e:
            raise InputError(f"{what} is not a valid path ({e})") from e
        if not any(path.is_relative_to(root) for root in media.local_roots):
            raise MediaRefused(
                f"{what} is outside the directories images may be read from "
                f"({', '.join(str(r) for r in media.local_roots)})",
                "local_media_forbidden",
            )
    try:
        _check_bytes(os.stat(path).st_size, limits, what)
        with open(path, "rb") as file:
            data = file.read() if limits.max_bytes is None else file.read(limits.max_bytes + 1)
    except FileNotFoundError as e:
        raise InputError(f"{what} does not exist: check the path") from e
    except IsADirectoryError as e:
        raise InputError(f"{what} is a directory, not an image file") from e
    except OSError as e:
        raise InputError(f"{what} cannot be read ({e.strerror or e})") from e
    return decode_image_bytes(data, limits, what=what)


def _load_remote(url: str, media: MediaPolicy) -> Image.Image:
    if media.fetch_remote is None:
        raise MediaRefused(
            f"remote image URLs are disabled ({_shorten(url)}): send {media.accepted()}",
            "remote_media_disabled",
        )
    data = media.fetch_remote(
        url
    )  # the fetcher raises InputError (MediaRefused) itself when it refuses or fails
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"fetch_remote must return bytes, got {type(data).__name__}")
    return decode_image_bytes(bytes(data), media.limits, what=f"the image at {_shorten(url)}")


def _shorten(text: str, limit: int = 64) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _formats(limits: ImageLimits) -> str:
    return ", ".join(sorted(limits.allowed_formats))


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / MiB:.1f} MiB"


def _reason(error: BaseException) -> str:
    return str(error) or type(error).__name__
