"""MathVista (AI4Math/MathVista, testmini): image, query + Explicit prompt, relaxed correctness
(docs/evaluation-protocol.md §2.3)."""

from __future__ import annotations

from typing import Any

from pixtral.evals.errors import DatasetError
from pixtral.evals.prompts import PromptSet
from pixtral.evals.tasks.base import CoTTask, DatasetSpec
from pixtral.evals.types import Item


class MathVista(CoTTask):
    name = "mathvista"
    dataset = DatasetSpec(
        "AI4Math/MathVista",
        "testmini",
        image_columns=("decoded_image",),
        required_columns=("decoded_image", "query", "answer"),
    )
    breakdowns = ("question_type", "answer_type", "task")

    def build_items(
        self, index: int, row: dict[str, Any], prompts: PromptSet, mode: str, split: str
    ) -> list[Item]:
        self.check_row(row)
        item_id, messages, max_tokens = self.single_image_request(
            split, index, row, "decoded_image", row["query"], prompts
        )
        choices = row.get("choices")
        answer = str(row["answer"])
        if choices:
            choices = [str(c) for c in choices]
            if answer not in choices:
                raise DatasetError(f"{item_id}: answer {answer!r} is not one of the choices {choices}")
            reference = chr(ord("A") + choices.index(answer))
        else:
            reference = answer
        metadata = row.get("metadata") or {}
        meta = {
            "question_type": row.get("question_type") or "unknown",
            "answer_type": row.get("answer_type")
            or "unknown",  # "list" rows score only in `fixed` at flex2/3
            "task": (metadata.get("task") if isinstance(metadata, dict) else None) or "unknown",
        }
        return [Item(item_id, self.name, messages, max_tokens, [reference], meta=meta)]
