"""Every limit and switch of the server in one dataclass; the CLI fills it from flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

API_KEY_ENV = "PIXTRAL_API_KEY"


@dataclass
class ServeSettings:
    # Identity
    served_model_name: str | None = None  # default: the engine's model_name

    # Auth: a request to /v1/* needs `Authorization: Bearer <api_key>` when set.
    api_key: str | None = None

    # Request shape limits
    max_body_bytes: int = 32 * 1024 * 1024
    max_images_per_request: int = 16
    max_image_bytes: int = 20 * 1024 * 1024  # encoded size of one image (data URL, file or download)
    max_image_pixels: int = 40_000_000  # width * height, read from the header before decoding
    max_image_side: int = 16_384
    allowed_image_formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
    max_messages: int = 512
    max_text_chars: int = 1_000_000  # summed over all text parts
    max_n: int = 8
    max_stop_sequences: int = 16

    # Generation limits
    max_tokens_limit: int = 4096  # largest max_tokens a client may ask for
    default_max_tokens: int = 512  # when the client sends none (always clipped to the context left)
    max_prompt_tokens: int | None = None  # default: the model's context length

    # Scheduling: requests beyond max_concurrency wait in a queue of max_queue; beyond that: 429.
    max_concurrency: int = 8  # generations submitted to the engine at once (it batches them)
    max_queue: int = 64
    request_timeout_s: float = 600.0  # from arrival to the last token, queue time included

    # Media sources: data: URLs always; http(s) only when allow_remote_media; local files only below
    # allowed_local_media_paths.
    allow_remote_media: bool = False
    allowed_media_domains: tuple[str, ...] = ()  # empty: any public host
    remote_timeout_s: float = 10.0
    remote_max_redirects: int = 3
    allowed_local_media_paths: tuple[Path, ...] = field(default_factory=tuple)

    # Lifecycle
    drain_timeout_s: float = 30.0
    access_log: bool = True

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        self.allowed_local_media_paths = tuple(Path(p).resolve() for p in self.allowed_local_media_paths)
        self.allowed_image_formats = tuple(f.upper() for f in self.allowed_image_formats)
        self.allowed_media_domains = tuple(d.lower().strip(".") for d in self.allowed_media_domains)
        for name in (
            "max_body_bytes",
            "max_images_per_request",
            "max_image_bytes",
            "max_image_pixels",
            "max_n",
            "max_tokens_limit",
            "default_max_tokens",
            "max_concurrency",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")
