"""Turn a validated request's messages into engine messages, with every image loaded under the server's
media policy.

The rules themselves live in one place, `prompt/images.py`'s `MediaPolicy`; this module only builds the
server's policy from its settings and answers a refusal with the right status. Image sources: `data:` URLs
always; `http(s)://` only through the SSRF-guarded fetcher (media_guard.py) when remote media is enabled;
local paths / `file://` URLs only below `--allowed-local-media-path` directories. Every image is checked
(bytes, header pixels, format) before it is decoded, and decoded completely before it is queued.
"""

from __future__ import annotations

from PIL import Image

from pixtral.errors import InputError
from pixtral.prompt.images import ImageLimits, MediaPolicy, MediaRefused, load_image
from pixtral.serve.errors import APIError, bad_request
from pixtral.serve.media_guard import RemoteMediaFetcher
from pixtral.serve.protocol import ChatCompletionRequest, ImagePart, TextPart
from pixtral.serve.settings import ServeSettings

# How a client switches a refused source on (a server's flag, so it is said here, not in prompt/).
_HOW_TO_ENABLE = {
    "local_media_disabled": " (or start the server with --allowed-local-media-path DIR)",
    "remote_media_disabled": " (or start the server with --allow-remote-media)",
}
_STATUS = {"local_media_forbidden": 403}  # every other refusal is a 400


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


def media_policy(settings: ServeSettings, fetcher: RemoteMediaFetcher | None) -> MediaPolicy:
    """The server's policy: its limits, local files only below its allowed directories (none by default),
    http(s) only through `fetcher` (None: refused)."""
    return MediaPolicy(
        limits=image_limits(settings), local_roots=settings.allowed_local_media_paths, fetch_remote=fetcher
    )


def load_part_image(url: str, media: MediaPolicy, where: str) -> Image.Image:
    """One image part's image, or the APIError that names the part and the rule it broke."""
    try:
        return load_image(url, media)
    except MediaRefused as e:
        status = _STATUS.get(e.reason, 400)
        raise APIError(status, f"{where}: {e}{_HOW_TO_ENABLE.get(e.reason, '')}", code=e.reason) from e
    except InputError as e:
        raise bad_request(f"{where}: {e}", code="invalid_image") from e


def to_engine_messages(request: ChatCompletionRequest, media: MediaPolicy) -> list[dict]:
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
                parts.append({"type": "image", "image": load_part_image(part.image_url.url, media, where)})
        out.append({"role": role, "content": parts, **extra})
    return out
