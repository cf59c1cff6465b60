"""Errors a user can cause. The CLI prints them as one line; the server turns them into a 4xx."""


class PixtralError(Exception):
    """Base class: the message says what went wrong and what to fix."""


class ConfigError(PixtralError):
    """A params.json / config.json that is missing, malformed, or contradicts the weights."""


class CheckpointError(PixtralError):
    """A weights file that is missing, truncated, corrupt, or holds missing/extra/mis-shaped tensors."""


class InputError(PixtralError):
    """A request the model cannot serve: bad messages, images, or sampling parameters."""


class ContextLengthError(InputError):
    """A prompt that leaves no room in the model's context for a generated token."""

    code = "context_length_exceeded"  # the OpenAI error code the server answers with
    param = "messages"


class MissingDependencyError(PixtralError, ImportError):
    """An optional package a feature needs is not installed; the message says what to `pip install`."""
