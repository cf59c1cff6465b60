"""Where answers come from: any OpenAI-compatible endpoint, or our engine in-process."""

from pixtral.evals.backends.http import OpenAIHTTPBackend
from pixtral.evals.backends.inprocess import InProcessBackend

__all__ = ["InProcessBackend", "OpenAIHTTPBackend"]
