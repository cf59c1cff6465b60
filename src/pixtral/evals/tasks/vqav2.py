"""VQAv2 (lmms-lab/VQAv2 parquet mirror, validation; docs/evaluation-protocol.md §2.6): short answer, VQA accuracy.

The answers column is a list of ten ``{answer, answer_confidence, answer_id}`` dicts; the reference harness
passed the dicts to its metric and crashed (bug B4). We take the ``answer`` strings in both scoring modes.
"""

from __future__ import annotations

from typing import Any

from pixtral.evals.metrics import vqa_match
from pixtral.evals.prompts import PromptSet
from pixtral.evals.tasks.base import DatasetSpec, Scored, Task
from pixtral.evals.types import Item


def answer_strings(answers: Any) -> list[str]:
    """VQAv2 reference answers as strings, whether the cells are dicts (HF schema) or plain strings."""
    out = []
    for a in answers or []:
        out.append(str(a["answer"]) if isinstance(a, dict) else str(a))
    return out


class VQAv2(Task):
    name = "vqav2"
    dataset = DatasetSpec(
        "lmms-lab/VQAv2",
        "validation",
        required_columns=("image", "question", "answers"),
        mirrors=("lmms-lab-encoder/VQAv2",),
    )
    breakdowns = ("answer_type",)

    def primary_metric(self, mode: str) -> str:
        return "vqa_match"

    def build_items(
        self, index: int, row: dict[str, Any], prompts: PromptSet, mode: str, split: str
    ) -> list[Item]:
        self.check_row(row)
        item_id, messages, max_tokens = self.single_image_request(
            split, index, row, "image", row["question"], prompts
        )
        meta = {"answer_type": row.get("answer_type") or "unknown"}
        if row.get("question_id") is not None:
            meta["question_id"] = row["question_id"]
        return [Item(item_id, self.name, messages, max_tokens, answer_strings(row["answers"]), meta=meta)]

    def score(self, answer: str, reference: Any, mode: str) -> Scored:
        return Scored({"vqa_match": vqa_match(answer, reference, mode)}, {"direct": answer.strip() or None})
