"""pixtral: run, serve, evaluate and train Pixtral vision-language models.

from pixtral import Engine, SamplingParams
engine = Engine.load()            # bundled default model; or a folder, or a hub id
print(engine.generate([{"role": "user", "content": "Hello"}]).text)
"""

import os

__version__ = "0.1.0"

# Weights and other CPU tensors of 2 MB and more on transparent huge pages: PyTorch's CPU allocator reads this
# variable once, at its first allocation (importing torch allocates none), so it is set on importing pixtral;
# a program that made CPU tensors before that keeps its own setting. One-row products stream weights faster
# with fewer TLB misses (int8 x int8 +25-35% in isolation, int8 decode +10-13%; docs/quantization.md, "Huge
# pages"). Set THP_MEM_ALLOC_ENABLE=0 to turn it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def __getattr__(name: str):
    # Lazy so that `import pixtral` (e.g. for the config or the CLI's --help) does not import torch.
    if name in ("Engine", "SamplingParams", "Completion", "StreamEvent"):
        from pixtral import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'pixtral' has no attribute {name!r}")
