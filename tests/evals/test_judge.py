"""The MM-MT-Bench judge: request layout per mode (bugs B1, B2, B12), rating parsing, bounded retries (B7, B13)."""

from __future__ import annotations

import asyncio

import pytest

from pixtral.evals.images import ImageData
from pixtral.evals.judge import (
    JUDGE_SYSTEM_PROMPT,
    JudgeParams,
    build_judge_messages,
    judge,
    judge_key,
    parse_rating,
)
from pixtral.evals.metrics import COMPAT, FIXED
from pixtral.evals.types import Completion

IMAGE = ImageData(b"\x89PNG\r\n\x1a\nfake", "image/png")
CONV = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What does the chart show?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Sales by year."}]},
    {"role": "user", "content": "Which year is highest?"},
    {"role": "assistant", "content": [{"type": "text", "text": "2021."}]},
]


def _text(messages):
    return "".join(p["text"] for p in messages[1]["content"] if p["type"] == "text")


def test_system_prompt_is_exact():
    assert JUDGE_SYSTEM_PROMPT.endswith('for example: "Rating: [[5]]".\n\n')
    assert JUDGE_SYSTEM_PROMPT.startswith("Please act as an impartial judge")


def test_fixed_judge_sees_every_question_the_image_and_text_references():
    msgs = build_judge_messages(CONV, IMAGE, 2, "It was 2021.", FIXED)
    text = _text(msgs)
    assert "What does the chart show?" in text and "Which year is highest?" in text  # B1 fixed
    assert "rolecontent" not in text
    assert (
        "### Reference answer:\nSales by year.\n\n" in text and "### Reference answer:\n2021.\n\n" in text
    )  # B2
    assert "{'role'" not in text and "[{'type'" not in text
    images = [p for p in msgs[1]["content"] if p["type"] == "image"]
    assert len(images) == 1 and images[0]["image"] is IMAGE  # B12 fixed: the image reaches the judge
    assert text.startswith("<|The Start of Conversation with User|>\n\n### User:\n")
    assert text.endswith(
        "\n\n### Assistant's answer:\nIt was 2021.\n\n<|The End of Conversation with User|>\n\n\n"
    )
    # the judged turn's reference is the last reference block, right before the answer
    assert text.index("2021.\n\n") < text.index("### Assistant's answer:")


def test_compat_judge_reproduces_mistral_evals():
    msgs = build_judge_messages(CONV, IMAGE, 2, "It was 2021.", COMPAT)
    text = _text(msgs)
    assert text.count("### User:\nrolecontent\n\n") == 2  # B1
    assert "What does the chart show?" not in text
    assert "{'role': 'assistant', 'content': [{'type': 'text', 'text': 'Sales by year.'}]}" in text  # B2
    assert "[{'type': 'text', 'text': '2021.'}]" in text  # B2: current-turn reference as a chunk-list repr
    assert all(p["type"] == "text" for p in msgs[1]["content"])  # B12: no image


def test_parse_rating():
    assert parse_rating("Rating: [[7]]", FIXED) == 7.0
    assert parse_rating("[[8.5]] then [[2]]", FIXED) == 8.5  # first match
    assert parse_rating("Rating: [6]", FIXED) == 6.0  # FastChat's single-bracket fallback
    assert parse_rating("Rating: [6]", COMPAT) is None
    assert parse_rating("Rating: [[11]]", FIXED) is None  # out of range
    assert parse_rating("Rating: [[11]]", COMPAT) == 11.0  # not validated by mistral-evals
    assert parse_rating(None, FIXED) is None and parse_rating(None, COMPAT) is None  # B13


class ScriptedJudge:
    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = 0

    async def complete(self, messages, *, max_tokens, temperature, item_id=None):
        self.calls += 1
        return Completion(self.replies.pop(0) if len(self.replies) > 1 else self.replies[0])


@pytest.mark.parametrize("mode", [FIXED, COMPAT])
def test_b7_unparseable_verdict_is_bounded(mode):
    backend = ScriptedJudge(["I refuse to give a number."])
    verdict = asyncio.run(judge(backend, [], JudgeParams(attempts=3), mode))
    assert backend.calls == 3  # mistral-evals looped forever here
    assert verdict.rating == -1.0 and verdict.status == "unparseable" and len(verdict.replies) == 3


@pytest.mark.parametrize("mode", [FIXED, COMPAT])
def test_b13_none_reply_is_retried_then_parsed(mode):
    backend = ScriptedJudge([None, "Rating: [[4]]"])
    verdict = asyncio.run(judge(backend, [], JudgeParams(attempts=3), mode))
    assert verdict.rating == 4.0 and verdict.replies == [None, "Rating: [[4]]"]


def test_judge_key_depends_on_content_and_params():
    a = build_judge_messages(CONV, IMAGE, 0, "x", FIXED)
    b = build_judge_messages(CONV, IMAGE, 0, "y", FIXED)
    p = JudgeParams()
    assert judge_key(a, p, FIXED) == judge_key(build_judge_messages(CONV, IMAGE, 0, "x", FIXED), p, FIXED)
    assert judge_key(a, p, FIXED) != judge_key(b, p, FIXED)
    assert judge_key(a, p, FIXED) != judge_key(a, JudgeParams(model="other"), FIXED)
    other_image = build_judge_messages(CONV, ImageData(b"\x89PNG\r\n\x1a\nother", "image/png"), 0, "x", FIXED)
    assert judge_key(a, p, FIXED) != judge_key(other_image, p, FIXED)
