"""Turn a validated request's messages into engine messages, with every image loaded under the limits.

Image sources: `data:` URLs always; `http(s)://` only through the SSRF-guarded fetcher when remote media is
enabled; local paths / `file://` URLs only below `--allowed-local-media-path` directories. Every image is
checked (bytes, header pixels, format) before it is decoded, and decoded completely before it is queued.
"""

from __future__ import annotations

import os
import re
import urllib.parse
import urllib.request
from pathlib import Path

from PIL import Image

from pixtral.errors import InputError
from pixtral.prompt.images import ImageLimits, decode_image_bytes, load_image
from pixtral.serve.errors import APIError, bad_request
from pixtral.serve.media_guard import MediaFetchError, RemoteMediaFetcher
from pixtral.serve.protocol import ChatCompletionRequest, ImagePart, TextPart
from pixtral.serve.settings import ServeSettings

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*):")


def image_limits(settings: ServeSettings) -> ImageLimits:
    return ImageLimits(
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        allowed_formats=frozenset(settings.allowed_image_formats),
    )


def check_request_shape(request: ChatCompletionRequest, settings: ServeSettings) -> int:
    """Cheap checks before any image is touched; returns the number of images."""
    if len(request.messages) > settings.max_messages:
        raise bad_request(
            f"The request has {len(request.messages)} messages; the limit is {settings.max_messages}.",
            param="messages",
        )
    n_images, n_chars = 0, 0
    for message in request.messages:
        if isinstance(message.content, str):
            n_chars += len(message.content)
        elif message.content:
            for part in message.content:
                if isinstance(part, ImagePart):
                    n_images += 1
                else:
                    n_chars += len(part.text)
    if n_images > settings.max_images_per_request:
        raise bad_request(
            f"The request has {n_images} images; this server accepts at most "
            f"{settings.max_images_per_request} per request. Send fewer images.",
            param="messages",
            code="too_many_images",
        )
    if n_chars > settings.max_text_chars:
        raise bad_request(
            f"The request has {n_chars:,} characters of text; the limit is {settings.max_text_chars:,}.",
            param="messages",
        )
    return n_images


def _local_path(url: str, settings: ServeSettings, where: str) -> Path:
    if not settings.allowed_local_media_paths:
        raise bad_request(
            f"{where}: local image files are disabled on this server; send the image as a "
            "data:image/...;base64 URL (or start the server with --allowed-local-media-path DIR).",
            code="local_media_disabled",
        )
    raw = urllib.request.url2pathname(urllib.parse.urlsplit(url).path) if url.startswith("file:") else url
    try:
        path = Path(os.path.realpath(raw))
    except (ValueError, OSError) as e:
        raise bad_request(f"{where}: invalid local path ({e}).") from e
    if not any(path.is_relative_to(root) for root in settings.allowed_local_media_paths):
        raise APIError(
            403,
            f"{where}: the file is outside the directories this server may read "
            f"({', '.join(str(p) for p in settings.allowed_local_media_paths)}).",
            code="local_media_forbidden",
        )
    return path


def load_part_image(
    url: str, settings: ServeSettings, fetcher: RemoteMediaFetcher | None, where: str
) -> Image.Image:
    limits = image_limits(settings)
    match = _SCHEME.match(url)
    scheme = match.group(1).lower() if match and len(match.group(1)) > 1 else ""  # "C:\..." is a path
    try:
        if scheme == "data":
            header = url[: min(len(url), 64)].split(",", 1)[0].lower()
            if not header.startswith("data:image/"):
                raise bad_request(
                    f"{where}: the data: URL is not an image (it starts {header[:40]!r}); "
                    "send data:image/png;base64,... or data:image/jpeg;base64,...",
                    code="invalid_image",
                )
            return load_image(url, limits)
        if scheme in ("http", "https"):
            if fetcher is None:
                raise bad_request(
                    f"{where}: fetching http(s) image URLs is disabled on this server; send the image as a "
                    "data:image/...;base64 URL (or start the server with --allow-remote-media).",
                    code="remote_media_disabled",
                )
            try:
                data = fetcher(url)
            except MediaFetchError as e:
                raise bad_request(f"{where}: {e}", code="remote_media_refused") from e
            return decode_image_bytes(data, limits, what=f"{where}: the downloaded image")
        if scheme in ("", "file"):
            return load_image(_local_path(url, settings, where), limits)
        raise bad_request(
            f"{where}: unsupported URL scheme {scheme!r}; use a data:image/...;base64 URL.",
            code="invalid_image",
        )
    except InputError as e:
        raise bad_request(f"{where}: {e}", code="invalid_image") from e


def to_engine_messages(
    request: ChatCompletionRequest, settings: ServeSettings, fetcher: RemoteMediaFetcher | None
) -> list[dict]:
    """OpenAI messages -> engine messages ({"type": "image", "image": PIL.Image} for every image)."""
    out: list[dict] = []
    for i, message in enumerate(request.messages):
        role = "system" if message.role == "developer" else message.role
        extra: dict = {}
        if message.tool_calls:
            extra["tool_calls"] = [
                call.model_dump(include={"id", "type", "function"}) for call in message.tool_calls
            ]
        if message.tool_call_id is not None:
            extra["tool_call_id"] = message.tool_call_id
        if message.content is None or isinstance(message.content, str):
            out.append({"role": role, "content": message.content or "", **extra})
            continue
        parts: list[dict] = []
        for j, part in enumerate(message.content):
            if isinstance(part, TextPart):
                parts.append({"type": "text", "text": part.text})
            else:
                where = f"messages[{i}].content[{j}]"
                parts.append(
                    {"type": "image", "image": load_part_image(part.image_url.url, settings, fetcher, where)}
                )
        out.append({"role": role, "content": parts, **extra})
    return out
