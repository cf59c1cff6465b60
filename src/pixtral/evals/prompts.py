"""Prompt sets: which text is appended to each task's question, and how many tokens the answer may take.

``explicit`` is the paper's protocol (docs/evaluation-protocol.md §2), ``naive`` lmms-eval's short prompts (§5),
and a JSON file can define custom templates. A template is a ``str.format`` string with one field,
``{question}`` (for MMMU the question plus lettered options, ``<image n>`` tags still in place; for MathVista
the dataset's ``query``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pixtral.evals.errors import EvalConfigError

# Verbatim from mistral-evals (docs/evaluation-protocol.md §2.2); the paper differs only in line wrapping.
PROMPT_EXPLICIT = """Analyze the image and question carefully, using step-by-step reasoning.
First, describe any image provided in detail. Then, present your reasoning. And finally your final answer in this format:
Final Answer: <answer>
where <answer> is:
- The single correct letter choice A, B, C, D, E, F, etc. when options are provided. Only include the letter.
- Your direct answer if no options are given, as a single phrase or number.
- If your answer is a number, only include the number without any unit.
- If your answer is a word or phrase, do not paraphrase or reformat the text you see in the image.
- You cannot answer that the question is unanswerable. You must either pick an option or provide a direct answer.
IMPORTANT: Remember, to end your answer with Final Answer: <answer>."""

# Verbatim from mistral-evals (docs/evaluation-protocol.md §2.4), including its "should should" typo; `fixed` uses the paper's text.
PROMPT_CHARTQA_COMPAT = """Analyze the image and question carefully, using step-by-step reasoning.
First, describe any image provided in detail. Then, present your reasoning. And finally your final answer in this format:
Final Answer: <answer>
where <answer> follows the following instructions:
- <answer> should should be a single phrase or number.
- <answer> should not paraphrase or reformat the text in the image.
- If <answer> is a ratio, it should be a decimal value like 0.25 instead of 1:4.
- If the question is a Yes/No question, <answer> should be Yes/No.
- If <answer> is a number, it should not contain any units.
- If <answer> is a percentage, it should include a % sign.
- If <answer> is an entity, it should include the full label from the graph.
IMPORTANT: Remember, to end your answer with Final Answer: <answer>."""

PROMPT_CHARTQA = PROMPT_CHARTQA_COMPAT.replace("should should", "should")

PROMPT_VQA = """- Answer the question using a single word, number, or short phrase. Use as few words as possible.
- If the answer is a number, report it as a number, i.e. 2, not Two, and only include the number without any unit.
- If the question is Yes/No, answer with Yes/No, and nothing else (no likely, unknown, etc.).
- You cannot answer that the question is unanswerable. You must answer."""

SHORT_ANSWER = "Answer the question using a single word or phrase."
MCQ_LETTER = "Answer with the option's letter from the given choices directly."
SINGLE_WORD = "Answer the question with a single word."  # lmms-eval's ChartQA post-prompt


@dataclass(frozen=True)
class PromptTemplate:
    template: str  # contains "{question}"
    max_tokens: int

    def render(self, question: str) -> str:
        return self.template.replace("{question}", question)


@dataclass(frozen=True)
class PromptSet:
    """Templates by task name. ``mmmu`` also has ``mmmu_open`` (open questions) when the set distinguishes them."""

    name: str
    templates: dict[str, PromptTemplate]

    def for_task(self, key: str) -> PromptTemplate:
        if key in self.templates:
            return self.templates[key]
        base = key.split("_open")[0]
        if base in self.templates:
            return self.templates[base]
        raise EvalConfigError(
            f"prompt set {self.name!r} has no template for task {key!r}; add it to the prompt file"
        )


def _explicit(scoring: str) -> dict[str, PromptTemplate]:
    chartqa = PROMPT_CHARTQA_COMPAT if scoring == "mistral-compat" else PROMPT_CHARTQA
    return {
        "mm_mt_bench": PromptTemplate("{question}", 4096),
        "mmmu": PromptTemplate("{question}\n" + PROMPT_EXPLICIT, 2048),
        "mathvista": PromptTemplate("{question}\n" + PROMPT_EXPLICIT, 2048),
        "chartqa": PromptTemplate("{question}\n" + chartqa, 2048),
        "docvqa": PromptTemplate("{question}\n" + SHORT_ANSWER, 10),
        "vqav2": PromptTemplate("{question}\n" + PROMPT_VQA, 10),
    }


def _naive() -> dict[str, PromptTemplate]:
    # The paper did not publish its naive prompts (docs/evaluation.md); these are lmms-eval's texts, byte for
    # byte: MMMU puts a blank line before its instruction, ChartQA asks for "a single word", MathVista's
    # `query` column is the prompt lmms-eval sends (hint + question, pre-rendered by the dataset).
    return {
        "mm_mt_bench": PromptTemplate("{question}", 4096),
        "mmmu": PromptTemplate("{question}\n\n" + MCQ_LETTER, 2048),
        "mmmu_open": PromptTemplate("{question}\n\n" + SHORT_ANSWER, 2048),
        "mathvista": PromptTemplate("{question}", 2048),
        "chartqa": PromptTemplate("{question}\n" + SINGLE_WORD, 2048),
        "docvqa": PromptTemplate("{question}\n" + SHORT_ANSWER, 10),
        "vqav2": PromptTemplate("{question}\n" + SHORT_ANSWER, 10),
    }


BUILTIN_PROMPT_SETS = ("explicit", "naive")


def load_prompt_set(name_or_path: str, scoring: str = "fixed") -> PromptSet:
    """``explicit``, ``naive``, or a JSON file.

    File format::

        {"name": "my-prompts", "base": "explicit",
         "tasks": {"chartqa": {"template": "{question}\\nAnswer in one word.", "max_tokens": 16}}}

    Tasks the file does not list come from ``base`` (default ``explicit``).
    """
    if name_or_path == "explicit":
        return PromptSet("explicit", _explicit(scoring))
    if name_or_path == "naive":
        return PromptSet("naive", _naive())
    path = Path(name_or_path)
    if not path.is_file():
        raise EvalConfigError(
            f"--prompts {name_or_path!r} is neither a built-in set ({', '.join(BUILTIN_PROMPT_SETS)}) nor a file"
        )
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EvalConfigError(f"cannot read prompt file {path}: {exc}") from exc
    if not isinstance(spec, dict) or not isinstance(spec.get("tasks", {}), dict):
        raise EvalConfigError(f'prompt file {path} must be a JSON object with a "tasks" object')
    base_name = spec.get("base", "explicit")
    if base_name not in BUILTIN_PROMPT_SETS:
        raise EvalConfigError(f'prompt file {path}: "base" must be one of {BUILTIN_PROMPT_SETS}')
    templates = dict(load_prompt_set(base_name, scoring).templates)
    for task, entry in spec.get("tasks", {}).items():
        if not isinstance(entry, dict) or "{question}" not in str(entry.get("template", "")):
            raise EvalConfigError(
                f'prompt file {path}: task {task!r} needs {{"template": "...{{question}}...", "max_tokens": N}}'
            )
        default = templates.get(task.split("_open")[0])
        max_tokens = int(entry.get("max_tokens", default.max_tokens if default else 2048))
        templates[task] = PromptTemplate(entry["template"], max_tokens)
    return PromptSet(str(spec.get("name", path.stem)), templates)
