"""The evaluation harness's task for a synthetic test set written by ``write_parquet`` / ``pixtral synth --format
parquet``: every task (multi-image and multi-turn included), exact match, per-task and fine/coarse tables.

Listed in ``pixtral.evals.tasks.TASKS``, so ``pixtral eval --task synthetic --data-dir DIR`` runs it.
Single-image, single-turn rows also fit the built-in ``vqav2`` task unchanged (same columns; ``answer_type``
is the synthetic task name, so its report breaks VQA accuracy down per task).

Prompt: the question as generated (it already states the answer format); a prompt set may define a
``synthetic`` template (``{question}`` is the last user turn's text) and its max_tokens.
"""

from __future__ import annotations

import json
from typing import Any

from pixtral.evals.errors import DatasetError, EvalConfigError
from pixtral.evals.images import to_image_data
from pixtral.evals.metrics import vqa_match
from pixtral.evals.prompts import PromptSet, PromptTemplate
from pixtral.evals.tasks.base import DatasetSpec, Scored, Task
from pixtral.evals.types import Item, image_part, text_part

DEFAULT_TEMPLATE = PromptTemplate("{question}", 16)


def normalise_answer(text: str) -> str:
    """Case, surrounding whitespace and quotes, and one trailing full stop do not count."""
    text = " ".join(str(text).split()).strip().strip("\"'`").strip()
    if text.endswith("."):
        text = text[:-1].rstrip()
    return text.casefold()


def exact_match(prediction: str | None, references: list[str]) -> float:
    pred = normalise_answer(prediction or "")
    return float(any(pred == normalise_answer(r) for r in references))


class SyntheticTask(Task):
    name = "synthetic"
    dataset = DatasetSpec(
        "pixtral-synthetic (local only: pixtral synth --format parquet, then --data-dir)",
        "test",
        image_columns=("image", "images"),
        required_columns=("messages", "images", "answers", "task"),
    )
    breakdowns = ("task", "granularity")

    def primary_metric(self, mode: str) -> str:
        return "exact_match"

    def metric_names(self, mode: str) -> list[str]:
        return ["exact_match", "vqa_match"]

    def _template(self, prompts: PromptSet) -> PromptTemplate:
        try:
            return prompts.for_task(self.name)
        except EvalConfigError:
            return DEFAULT_TEMPLATE

    def build_items(
        self, index: int, row: dict[str, Any], prompts: PromptSet, mode: str, split: str
    ) -> list[Item]:
        self.check_row(row)
        where = self.item_id(split, index)
        images = [to_image_data(cell, row.get("__base_dir__")) for cell in row["images"] or []]
        if not images or any(im is None for im in images):
            raise DatasetError(f"{where}: 'images' must be a non-empty list of images")
        try:
            conversation = (
                json.loads(row["messages"]) if isinstance(row["messages"], str) else row["messages"]
            )
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: 'messages' is not JSON ({exc.msg})") from exc
        if not conversation or conversation[-1].get("role") != "user":
            raise DatasetError(f"{where}: 'messages' must end with the user turn to answer")
        template = self._template(prompts)
        pending = list(images)
        messages: list[dict[str, Any]] = []
        for i, m in enumerate(conversation):
            content = m["content"]
            if isinstance(content, list):
                parts = []
                for p in content:
                    if p.get("type") == "image":
                        if not pending:
                            raise DatasetError(f"{where}: more image parts than entries in 'images'")
                        parts.append(image_part(pending.pop(0)))
                    else:
                        text = str(p.get("text", ""))
                        last = i == len(conversation) - 1
                        parts.append(text_part(template.render(text) if last else text))
                content = parts
            messages.append({"role": m["role"], "content": content})
        if pending:
            raise DatasetError(
                f"{where}: {len(pending)} entries of 'images' have no image part in 'messages'"
            )
        meta = {"task": str(row["task"]), "granularity": str(row.get("granularity") or "unknown")}
        if row.get("question_id") is not None:
            meta["question_id"] = row["question_id"]
        refs = [str(a) for a in row["answers"]]
        return [Item(where, self.name, messages, template.max_tokens, refs, meta=meta)]

    def score(self, answer: str, reference: Any, mode: str) -> Scored:
        refs = [str(r) for r in reference]
        return Scored(
            {"exact_match": exact_match(answer, refs), "vqa_match": vqa_match(answer, refs, mode)},
            {"direct": answer.strip() or None},
        )
