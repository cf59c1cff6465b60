"""Seeded synthetic multimodal data: images drawn with PIL, questions that need them, exact short answers.

    from pixtral.synthetic import generate, write_jsonl, write_parquet
    samples = list(generate("train", 1000, seed=0, max_side=256))
    write_jsonl("data/train", samples)            # data/train/train.jsonl + data/train/images/*.png

See docs/synthetic.md for the tasks, the split rule and the file formats.
"""

from __future__ import annotations

from pixtral.synthetic.core import MAX_SIDE, SPLITS, Sample, size_owner
from pixtral.synthetic.export import write_jsonl, write_parquet
from pixtral.synthetic.generate import generate, make_sample, resolve_tasks
from pixtral.synthetic.tasks import TASKS

__all__ = ["MAX_SIDE", "SPLITS", "TASKS", "Sample", "generate", "make_sample", "resolve_tasks", "size_owner",
           "write_jsonl", "write_parquet"]  # fmt: skip
