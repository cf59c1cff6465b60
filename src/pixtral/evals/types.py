"""The data that flows through the harness: items (one request each), answers and verdicts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pixtral.evals.images import ImageData

if TYPE_CHECKING:  # annotations only: the tasks build items, so they import this module
    from pixtral.evals.tasks.base import Task

# A message part is either an OpenAI-shaped text part or our in-memory image part {"type": "image", "image": ImageData}.
Message = dict[str, Any]


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def image_part(image: ImageData) -> dict[str, Any]:
    return {"type": "image", "image": image}


def _map_parts(messages: list[Message], image_fn) -> list[Message]:
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = [image_fn(p["image"]) if p.get("type") == "image" else dict(p) for p in content]
        out.append({"role": m["role"], "content": content})
    return out


def to_openai_messages(messages: list[Message]) -> list[Message]:
    """Messages with every image as an ``image_url`` data URL of its original bytes (the wire format)."""
    return _map_parts(messages, lambda im: {"type": "image_url", "image_url": {"url": im.data_url()}})


def to_public_messages(messages: list[Message]) -> list[Message]:
    """Messages with every image replaced by its hash, MIME type and size (what reports and hashes use)."""
    return _map_parts(messages, lambda im: im.summary())


def stable_hash(obj: Any) -> str:
    """sha256 of a canonical JSON rendering."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class Item:
    """One model request of one task, with everything needed to score its answer.

    ``item_id`` is stable: ``{task}:{split}:{row index}`` plus ``:t{turn}`` for multi-turn conversations,
    whatever ``--limit`` / ``--shuffle`` selected it.
    """

    item_id: str
    task: str
    messages: list[Message]
    max_tokens: int
    reference: Any
    temperature: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    group: str = ""  # cluster for the bootstrap (a conversation); defaults to the item id
    extra: dict[str, Any] = field(
        default_factory=dict
    )  # in-memory only (e.g. what the judge needs); never stored

    def __post_init__(self) -> None:
        if not self.group:
            self.group = self.item_id

    def public_request(self) -> dict[str, Any]:
        return {
            "messages": to_public_messages(self.messages),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }

    def request_key(self, model: str) -> str:
        """Content hash of what is asked of which model: a finished answer is reused only for the same key."""
        return stable_hash({"model": model, "item": self.item_id, **self.public_request()})


@dataclass
class Completion:
    """What a backend returns for one request."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    endpoint: str | None = None


@dataclass
class ItemRecord:
    """What is kept of an item once its request has been sent: no image bytes."""

    item_id: str
    task: str
    key: str
    request: dict[str, Any]
    reference: Any
    meta: dict[str, Any]
    group: str
    judge_key: str | None = None


@dataclass
class TaskRun:
    task: Task
    records: list[ItemRecord] = field(default_factory=list)
    dataset: dict[str, Any] = field(default_factory=dict)
    scoring: str = "fixed"
    prompt_set: str = "explicit"
