"""ChartQA (lmms-lab/ChartQA, test): image, question + ChartQA Explicit prompt, relaxed correctness
(docs/evaluation-protocol.md §2.4)."""

from __future__ import annotations

from typing import Any

from pixtral.evals.prompts import PromptSet
from pixtral.evals.tasks.base import CoTTask, DatasetSpec
from pixtral.evals.types import Item


class ChartQA(CoTTask):
    name = "chartqa"
    dataset = DatasetSpec(
        "lmms-lab/ChartQA",
        "test",
        required_columns=("image", "question", "answer"),
        mirrors=("lmms-lab-encoder/ChartQA",),
    )
    breakdowns = ("type",)

    def build_items(
        self, index: int, row: dict[str, Any], prompts: PromptSet, mode: str, split: str
    ) -> list[Item]:
        self.check_row(row)
        item_id, messages, max_tokens = self.single_image_request(
            split, index, row, "image", row["question"], prompts
        )
        answer = row["answer"]
        refs = [str(a) for a in answer] if isinstance(answer, list) else [str(answer)]
        meta = {"type": row.get("type") or "unknown"}
        return [Item(item_id, self.name, messages, max_tokens, refs, meta=meta)]
