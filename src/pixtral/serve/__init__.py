"""OpenAI-compatible HTTP server with a chat page: `create_app(engine, settings)`; `pixtral serve` CLI."""

from pixtral.serve.app import create_app
from pixtral.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
