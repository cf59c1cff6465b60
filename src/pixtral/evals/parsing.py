"""Answer extraction: the paper's parsing levels (App. C, docs/evaluation-protocol.md §3.4–3.6) as separate, named functions.

- ``exact``  (paper "Baseline"): the response must *end* with ``Final Answer: <answer>``.
- ``flex1``  (Flexible Level 1): the last ``answer:`` anywhere (``Final Answer:``, ``Answer:``...), no markdown handling.
- ``flex2``  (Flexible Level 2): markdown around the keyword normalised and ``* _ [ ] ( )`` deleted; this is exactly
  mistral-evals' ``explicit_prompt_relaxed_correctness`` parser.
- ``flex3``  (Flexible Level 3) is not a parser: it is ``flex2`` plus the anywhere-in-answer match of
  :func:`pixtral.evals.metrics.anywhere_in_answer` (an over-generous upper bound).
- ``direct``: the whole response, stripped (how short-answer and naive-prompt outputs are read).

Every parser returns ``None`` when it finds nothing; that is counted as a parse failure.
"""

from __future__ import annotations

import re

PARSE_LEVELS = ("exact", "flex1", "flex2", "flex3")

_MARKDOWN_KEYWORD = re.compile(r"([aA]nswer)\**:\**")
_DELETE_CHARS = re.compile(r"[*_\[\]()]")


def _first_nonempty_line(text: str) -> str | None:
    for line in text.split("\n"):
        if line.strip():
            return line.strip()
    return None


def parse_exact(response: str) -> str | None:
    """The answer of a response that ends with ``Final Answer: <answer>`` (case-insensitive keyword)."""
    idx = response.lower().rfind("final answer:")
    if idx < 0:
        return None
    rest = [line.strip() for line in response[idx + len("final answer:") :].split("\n")]
    rest = [line for line in rest if line]
    return rest[0] if len(rest) == 1 else None


def parse_flex1(response: str) -> str | None:
    """The first non-empty line after the last ``answer:`` (case-insensitive), stripped."""
    idx = response.lower().rfind("answer:")
    if idx < 0:
        return None
    return _first_nonempty_line(response[idx + len("answer:") :])


def parse_flex2(response: str) -> str | None:
    """mistral-evals' explicit-prompt parser: ``**Answer:**`` → ``Answer:``, last ``answer:``, ``*_[]()`` deleted."""
    text = _MARKDOWN_KEYWORD.sub(r"\1:", response)
    idx = text.lower().rfind("answer:")
    if idx < 0:
        return None
    line = _first_nonempty_line(text[idx + len("answer:") :])
    if line is None:
        return None
    line = _DELETE_CHARS.sub("", line)  # not re-stripped, as in mistral-evals ("( B)" -> " B")
    return line or None


def parse_direct(response: str) -> str | None:
    text = response.strip()
    return text or None


PARSERS = {"exact": parse_exact, "flex1": parse_flex1, "flex2": parse_flex2, "direct": parse_direct}
