"""MM-MT-Bench (mistralai/MM-MT-Bench, eval): one request per user turn, references as history
(docs/evaluation-protocol.md §2.1).

Teacher forcing: the history of turn *k* holds the dataset's reference answers for turns < k, so every turn
is independent and all of them run in parallel. Each answer is rated 1–10 by an LLM judge (see judge.py).
"""

from __future__ import annotations

import json
from typing import Any

from pixtral.evals.errors import DatasetError
from pixtral.evals.images import ImageData
from pixtral.evals.prompts import PromptSet
from pixtral.evals.tasks.base import DatasetSpec, Scored, Task
from pixtral.evals.types import Item, image_part, text_part


def content_text(content: Any) -> str:
    """The text of a message's content: a plain string, or the text chunks of a chunk list joined by newlines."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(
        str(c.get("text", "")) for c in content if isinstance(c, dict) and c.get("type") == "text"
    )


def parse_conversation(value: Any, where: str) -> list[dict[str, Any]]:
    conv = json.loads(value) if isinstance(value, str) else value
    if not isinstance(conv, list) or not conv:
        raise DatasetError(f"{where}: 'conversation' must be a JSON list of {{role, content}} messages")
    for i, m in enumerate(conv):
        expected = "user" if i % 2 == 0 else "assistant"
        if not isinstance(m, dict) or m.get("role") != expected:
            raise DatasetError(
                f"{where}: message {i} should have role {expected!r} (user and assistant alternate)"
            )
    if len(conv) % 2:
        raise DatasetError(f"{where}: the conversation ends with a user turn that has no reference answer")
    return conv


def user_content(content: Any, image: ImageData) -> str | list[dict[str, Any]]:
    """A dataset user message as request content: a plain string stays a string, as the reference sends it."""
    return content if isinstance(content, str) else user_parts(content, image)


def user_parts(content: Any, image: ImageData) -> list[dict[str, Any]]:
    """A dataset user message as our content parts; ``{"type": "image"}`` chunks become the row's image."""
    if isinstance(content, str):
        return [text_part(content)]
    parts = []
    for chunk in content:
        if chunk.get("type") == "image":
            parts.append(image_part(image))
        elif chunk.get("type") == "text":
            parts.append(text_part(str(chunk.get("text", ""))))
    return parts


def _render_last_text(content: str | list[dict[str, Any]], render: Any) -> str | list[dict[str, Any]]:
    """The judged question with the prompt template applied to its (last) text."""
    if isinstance(content, str):
        return render(content)
    parts = list(content)
    for k in range(len(parts) - 1, -1, -1):
        if parts[k]["type"] == "text":
            parts[k] = text_part(render(parts[k]["text"]))
            break
    return parts


class MMMTBench(Task):
    name = "mm_mt_bench"
    dataset = DatasetSpec(
        "mistralai/MM-MT-Bench", "eval", required_columns=("image", "conversation", "category")
    )
    breakdowns = ("category", "turn")
    needs_judge = True

    def primary_metric(self, mode: str) -> str:
        return "judge_rating"

    def build_items(
        self, index: int, row: dict[str, Any], prompts: PromptSet, mode: str, split: str
    ) -> list[Item]:
        self.check_row(row)
        where = self.item_id(split, index)
        conv = parse_conversation(row["conversation"], where)
        image = self.image(row, "image")
        template = prompts.for_task(self.name)
        items = []
        for i in range(0, len(conv), 2):
            messages: list[dict[str, Any]] = []
            for j, m in enumerate(conv[: i + 1]):
                if m["role"] == "user":
                    content = user_content(m["content"], image)
                    if j == i and template.template != "{question}":
                        content = _render_last_text(content, template.render)
                    messages.append({"role": "user", "content": content})
                else:
                    messages.append({"role": "assistant", "content": content_text(m["content"])})
            turn = i // 2
            items.append(
                Item(
                    self.item_id(split, index, turn),
                    self.name,
                    messages,
                    template.max_tokens,
                    content_text(conv[i + 1]["content"]),
                    meta={"category": str(row["category"]), "turn": turn + 1},  # 1-based, as in reports
                    group=where,
                    extra={"conversation": conv, "image": image, "turn_index": i},
                )
            )
        return items

    def score(self, answer: str, reference: Any, mode: str) -> Scored:  # rated by the judge, see runner
        return Scored({}, {})
