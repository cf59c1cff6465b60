"""What every task is: a dataset location, a row → items function, and an answer → metrics function."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixtral.evals.errors import DatasetError
from pixtral.evals.images import ImageData, to_image_data
from pixtral.evals.metrics import COMPAT, anywhere_in_answer, flex3_correctness, relaxed_correctness
from pixtral.evals.parsing import PARSERS
from pixtral.evals.prompts import PromptSet
from pixtral.evals.types import Item, image_part, text_part


@dataclass
class Scored:
    """Metrics of one answer (each in [0, 1], or a 1–10 rating) and the parsed answers behind them."""

    metrics: dict[str, float | None]
    parsed: dict[str, str | None]


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # Hugging Face dataset id
    split: str
    config: str | None = None
    image_columns: tuple[str, ...] = ("image",)
    required_columns: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = ()  # ids with the same files, tried in order when ``name`` is gone


class Task(ABC):
    name: str
    dataset: DatasetSpec
    breakdowns: tuple[str, ...] = ()  # meta keys that get per-value tables in the report
    needs_judge: bool = False

    @abstractmethod
    def build_items(
        self, index: int, row: dict[str, Any], prompts: PromptSet, mode: str, split: str
    ) -> list[Item]:
        """The requests for one dataset row (one for most tasks, one per user turn for MM-MT-Bench)."""

    @abstractmethod
    def score(self, answer: str, reference: Any, mode: str) -> Scored:
        """Metrics of one model answer (judge-based tasks score from the verdict instead)."""

    @abstractmethod
    def primary_metric(self, mode: str) -> str:
        """The metric reported as the task's headline number."""

    def metric_names(self, mode: str) -> list[str]:
        return [self.primary_metric(mode)]

    # ------------------------------------------------------------- helpers shared by the tasks

    def item_id(self, split: str, index: int, turn: int | None = None) -> str:
        return f"{self.name}:{split}:{index}" + ("" if turn is None else f":t{turn}")

    def check_row(self, row: dict[str, Any]) -> None:
        missing = [c for c in self.dataset.required_columns if c not in row]
        if missing:
            raise DatasetError(
                f"{self.name}: rows lack the columns {missing} (have {sorted(row)}); use {self.dataset.name}'s "
                "schema, or a local folder of parquet/arrow/jsonl files with the same column names"
            )

    def image(self, row: dict[str, Any], column: str, base_dir: Path | None = None) -> ImageData:
        img = to_image_data(row.get(column), base_dir or row.get("__base_dir__"))
        if img is None:
            raise DatasetError(f"{self.name}: row has no image in column {column!r}")
        return img

    def single_image_request(
        self,
        split: str,
        index: int,
        row: dict[str, Any],
        image_column: str,
        question: str,
        prompts: PromptSet,
    ) -> tuple[str, list[dict[str, Any]], int]:
        """Image chunk first, then the prompt text (every single-image task, docs/evaluation-protocol.md §2)."""
        template = prompts.for_task(self.name)
        content = [image_part(self.image(row, image_column)), text_part(template.render(question))]
        return self.item_id(split, index), [{"role": "user", "content": content}], template.max_tokens


class CoTTask(Task):
    """MMMU, MathVista, ChartQA: relaxed correctness at every parsing level (docs/evaluation-protocol.md §3.3–3.6)."""

    def primary_metric(self, mode: str) -> str:
        # mistral-evals' headline metric is explicit_prompt_relaxed_correctness = Flexible Level 2;
        # the paper's Table 2 "baseline" is the exact level.
        return "flex2" if mode == COMPAT else "exact"

    def metric_names(self, mode: str) -> list[str]:
        return ["exact", "flex1", "flex2", "flex3", "direct", "anywhere"]

    def score(self, answer: str, reference: Any, mode: str) -> Scored:
        refs = [str(r) for r in reference]
        metrics: dict[str, float | None] = {}
        parsed: dict[str, str | None] = {}
        for level, parser in PARSERS.items():
            p = parser(answer)
            parsed[level] = p
            metrics[level] = relaxed_correctness(p, refs, mode)
        metrics["anywhere"] = anywhere_in_answer(answer, refs, mode)
        metrics["flex3"] = flex3_correctness(
            answer, refs, mode, l2=metrics["flex2"], anywhere=metrics["anywhere"]
        )
        return Scored(metrics, parsed)
