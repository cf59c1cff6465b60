"""DocVQA (lmms-lab/DocVQA, config DocVQA, validation; docs/evaluation-protocol.md §2.5): short answer, ANLS."""

from __future__ import annotations

from typing import Any

from pixtral.evals.metrics import anls
from pixtral.evals.prompts import PromptSet
from pixtral.evals.tasks.base import DatasetSpec, Scored, Task
from pixtral.evals.types import Item


class DocVQA(Task):
    name = "docvqa"
    dataset = DatasetSpec(
        "lmms-lab/DocVQA",
        "validation",
        config="DocVQA",
        required_columns=("image", "question", "answers"),
        mirrors=("lmms-lab-encoder/DocVQA",),
    )
    breakdowns = ("question_type",)

    def primary_metric(self, mode: str) -> str:
        return "anls"

    def build_items(
        self, index: int, row: dict[str, Any], prompts: PromptSet, mode: str, split: str
    ) -> list[Item]:
        self.check_row(row)
        item_id, messages, max_tokens = self.single_image_request(
            split, index, row, "image", row["question"], prompts
        )
        qtypes = row.get("question_types") or ["unknown"]
        meta = {"question_type": qtypes[0] if isinstance(qtypes, list) else str(qtypes)}
        if row.get("questionId") is not None:
            meta["question_id"] = row["questionId"]
        return [Item(item_id, self.name, messages, max_tokens, [str(a) for a in row["answers"]], meta=meta)]

    def score(self, answer: str, reference: Any, mode: str) -> Scored:
        return Scored({"anls": anls(answer, reference, mode)}, {"direct": answer.strip() or None})
