"""pixtral: run, serve, evaluate and train Pixtral vision-language models.

from pixtral import Engine, SamplingParams
engine = Engine.load()            # bundled default model; or a folder, or a hub id
print(engine.generate([{"role": "user", "content": "Hello"}]).text)
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so that `import pixtral` (e.g. for the config or the CLI's --help) does not import torch.
    if name in ("Engine", "SamplingParams", "Completion", "StreamEvent"):
        from pixtral import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'pixtral' has no attribute {name!r}")
