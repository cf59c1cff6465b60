"""The one way to generate: `Engine.load(...)` then `generate` / `stream`."""

from pixtral.engine.engine import Completion, Engine, StreamEvent
from pixtral.engine.protocol import EngineClient
from pixtral.engine.sampling import SamplingParams

__all__ = ["Completion", "Engine", "EngineClient", "SamplingParams", "StreamEvent"]
