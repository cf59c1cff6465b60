"""MMMU (lmms-lab/MMMU, validation; docs/evaluation-protocol.md §2.2): images interleaved at their ``<image n>`` tags."""

from __future__ import annotations

import ast
import re
from typing import Any

from pixtral.evals.errors import DatasetError
from pixtral.evals.prompts import PromptSet
from pixtral.evals.tasks.base import CoTTask, DatasetSpec
from pixtral.evals.types import Item, image_part, text_part

_IMAGE_TAG = re.compile(r"(<image \d+>)")


def _options(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as exc:
            raise DatasetError(f"mmmu: cannot parse options {value[:80]!r}: {exc}") from exc
    return [str(v) for v in value]


def _reference(answer: str) -> list[str]:
    if "[" in answer:
        try:
            return [str(a) for a in ast.literal_eval(answer)]
        except (ValueError, SyntaxError):
            return [answer]
    return [answer]


class MMMU(CoTTask):
    name = "mmmu"
    dataset = DatasetSpec(
        "lmms-lab/MMMU",
        "validation",
        image_columns=tuple(f"image_{i}" for i in range(1, 8)),
        required_columns=("question", "options", "question_type", "answer", "image_1"),
        mirrors=("lmms-lab-encoder/MMMU",),
    )
    breakdowns = ("subject", "question_type")

    def build_items(
        self, index: int, row: dict[str, Any], prompts: PromptSet, mode: str, split: str
    ) -> list[Item]:
        self.check_row(row)
        item_id = self.item_id(split, index)
        options = _options(row.get("options"))
        multiple_choice = row["question_type"] == "multiple-choice"
        body = row["question"]
        if multiple_choice:
            body += "\n" + "\n".join(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(options))
        template = prompts.for_task("mmmu" if multiple_choice else "mmmu_open")
        prefix, _, suffix = template.template.partition("{question}")

        content: list[dict[str, Any]] = []
        for chunk in _IMAGE_TAG.split(body):
            tag = _IMAGE_TAG.fullmatch(chunk)
            if tag:
                n = int(chunk[len("<image ") : -1])
                column = f"image_{n}"
                if row.get(column) is None:
                    raise DatasetError(f"{item_id}: the question refers to <image {n}> but {column} is empty")
                content.append(image_part(self.image(row, column)))
            elif chunk.strip():
                content.append(text_part(chunk))
        # The prompt is appended to the last text chunk, or becomes a new chunk after a trailing image
        # (docs/evaluation-protocol.md §2.2).
        if prefix:
            if content and content[0]["type"] == "text":
                content[0] = text_part(prefix + content[0]["text"])
            else:
                content.insert(0, text_part(prefix))
        if suffix:
            if content and content[-1]["type"] == "text":
                content[-1] = text_part(content[-1]["text"] + suffix)
            else:
                content.append(text_part(suffix.lstrip("\n")))
        meta = {"question_type": row["question_type"], "subject": _subject(row)}
        messages = [{"role": "user", "content": content}]
        return [
            Item(item_id, self.name, messages, template.max_tokens, _reference(str(row["answer"])), meta=meta)
        ]


def _subject(row: dict[str, Any]) -> str:
    """``validation_Art_Theory_12`` → ``Art_Theory``."""
    rid = str(row.get("id") or "")
    parts = rid.split("_")
    return "_".join(parts[1:-1]) if len(parts) >= 3 else "unknown"
