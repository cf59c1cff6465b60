"""Everything one evaluation run needs, as one dataclass (the CLI builds it; the Python API takes it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pixtral.evals.judge import DEFAULT_JUDGE_MODEL, DEFAULT_JUDGE_URL


@dataclass
class EvalConfig:
    tasks: list[str]
    output_dir: Path
    # model
    endpoints: list[str] = field(default_factory=list)
    model: str | None = None  # served model name; asked from /v1/models when None
    api_key_env: str | None = None
    in_process: bool = False
    engine_model: str | None = None
    engine_dtype: str | None = None
    engine_device: str | None = None
    engine_tensor_parallel_size: int = 1  # --in-process over N ranks (docs/tensor-parallel.md)
    concurrency: int = 8
    timeout: float = 600.0
    retries: int = 5
    backoff: float = 1.0
    wait_for_endpoint: float = 0.0  # seconds to wait for GET /v1/models to answer (a server still loading)
    # data
    data_dir: Path | None = None
    dataset: str | None = None
    dataset_config: str | None = None
    split: str | None = None
    revision: str | None = None
    limit: int | None = None
    shuffle: bool = False
    seed: int = 0
    # protocol
    prompts: str = "explicit"
    scoring: str = "fixed"
    # judge (MM-MT-Bench)
    judge_model: str = DEFAULT_JUDGE_MODEL
    judge_endpoints: list[str] = field(default_factory=lambda: [DEFAULT_JUDGE_URL])
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_concurrency: int = 8
    judge_attempts: int = 3
    judge_max_tokens: int = 2048
    judge_timeout: float = 300.0
    # reporting
    bootstrap: int = 1000
    progress: bool = True

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["output_dir"] = str(self.output_dir)
        d["data_dir"] = str(self.data_dir) if self.data_dir else None
        return d
