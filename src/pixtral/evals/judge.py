"""MM-MT-Bench judging: the judge request, the rating parser, and a bounded retry loop (docs/evaluation-protocol.md §2.1, §6 B1/B2/B7/B12/B13).

``fixed`` sends what the paper describes: every user question up to the judged turn (text *and* image), each
turn's reference answer as text, then the assistant's answer. ``mistral-compat`` sends what mistral-evals
actually sends: ``### User:\\nrolecontent`` for every question (B1), references as Python reprs (B2) and no
image (B12). In both modes a reply without a rating is retried at most ``attempts`` times and then recorded as
unparseable with rating −1 (B7 looped forever), and a ``None`` reply counts as unparseable (B13 crashed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from pixtral.evals.images import ImageData
from pixtral.evals.metrics import COMPAT
from pixtral.evals.tasks.mm_mt_bench import content_text, user_parts
from pixtral.evals.types import Completion, Message, stable_hash, text_part, to_public_messages

DEFAULT_JUDGE_MODEL = "gpt-4o-2024-05-13"
DEFAULT_JUDGE_URL = "https://api.openai.com/v1"

# Exact, including the two trailing newlines of the code string.
JUDGE_SYSTEM_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to "
    "the most recent question given the previous conversation as context. Your evaluation should consider "
    "correctness and helpfulness. You will be given a reference answer and the assistant's answer. Begin your "
    "evaluation by comparing the assistant's answer with the reference answer. Identify and correct any "
    "mistakes. Be as objective as possible. After providing your explanation, you must rate the response on a "
    'scale of 1 to 10 by strictly following this format: "[[rating]]", for example: "Rating: [[5]]".\n\n'
)
START = "<|The Start of Conversation with User|>\n\n"
END = "\n\n<|The End of Conversation with User|>\n\n\n"

_DOUBLE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_SINGLE = re.compile(r"\[(\d+\.?\d*)\]")


def _merge_text(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in parts:
        if p["type"] == "text" and out and out[-1]["type"] == "text":
            out[-1] = text_part(out[-1]["text"] + p["text"])
        else:
            out.append(p)
    return out


def build_judge_messages(
    conversation: list[dict[str, Any]], image: ImageData, turn_index: int, answer: str, mode: str
) -> list[Message]:
    """The judge's ``[system, user]`` messages for the user turn at ``conversation[turn_index]``."""
    parts: list[dict[str, Any]] = [text_part(START)]
    for k in range(0, turn_index + 1, 2):
        reference = conversation[k + 1]
        if mode == COMPAT:
            # mistral-evals iterates the keys of the user dict ("role", "content"): the question never arrives.
            ref_text = repr(reference) if k < turn_index else str(reference["content"])
            parts.append(text_part(f"### User:\nrolecontent\n\n### Reference answer:\n{ref_text}\n\n"))
        else:
            parts.append(text_part("### User:\n"))
            parts.extend(user_parts(conversation[k]["content"], image))
            parts.append(text_part(f"\n\n### Reference answer:\n{content_text(reference['content'])}\n\n"))
    parts.append(text_part(f"\n\n### Assistant's answer:\n{answer}{END}"))
    return [
        {"role": "system", "content": JUDGE_SYSTEM_PROMPT},
        {"role": "user", "content": _merge_text(parts)},
    ]


def parse_rating(reply: str | None, mode: str) -> float | None:
    """The rating in a judge reply, or None.

    compat: the first ``[[x]]``, unvalidated. fixed: the first ``[[x]]``, else the first ``[x]`` (FastChat's
    fallback), and only values in 1–10.
    """
    if not reply:
        return None
    m = _DOUBLE.search(reply)
    if mode == COMPAT:
        return float(m.group(1)) if m else None
    if m is None:
        m = _SINGLE.search(reply)
    if m is None:
        return None
    value = float(m.group(1))
    return value if 1.0 <= value <= 10.0 else None


@dataclass(frozen=True)
class JudgeParams:
    model: str = DEFAULT_JUDGE_MODEL
    temperature: float = 0.0
    max_tokens: int = 2048
    attempts: int = 3  # judge replies per turn before it is recorded as unparseable


@dataclass
class Verdict:
    rating: float  # -1.0 when no attempt produced a parseable rating
    status: str  # "ok" | "unparseable"
    replies: list[str | None] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)  # prompt/completion tokens over all attempts


def judge_key(messages: list[Message], params: JudgeParams, mode: str) -> str:
    """Content hash of a judge call (images by their sha256): identical calls are answered from the cache."""
    return stable_hash(
        {
            "judge": params.model,
            "temperature": params.temperature,
            "max_tokens": params.max_tokens,
            "attempts": params.attempts,
            "mode": mode,
            "messages": to_public_messages(messages),
        }
    )


class ChatBackend(Protocol):
    async def complete(
        self, messages: list[Message], *, max_tokens: int, temperature: float, item_id: str | None = None
    ) -> Completion: ...


async def judge(
    backend: ChatBackend, messages: list[Message], params: JudgeParams, mode: str, item_id: str | None = None
) -> Verdict:
    """Ask the judge until a reply carries a rating, at most ``params.attempts`` times.

    Transport failures are the backend's business (it retries, then raises BackendError, which is *not* a
    verdict and is not cached).
    """
    replies: list[str | None] = []
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    for _ in range(max(1, params.attempts)):
        completion = await backend.complete(
            messages, max_tokens=params.max_tokens, temperature=params.temperature, item_id=item_id
        )
        replies.append(completion.text)
        usage["prompt_tokens"] += completion.prompt_tokens or 0
        usage["completion_tokens"] += completion.completion_tokens or 0
        rating = parse_rating(completion.text, mode)
        if rating is not None:
            return Verdict(rating, "ok", replies, usage)
    return Verdict(-1.0, "unparseable", replies, usage)
