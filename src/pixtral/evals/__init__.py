"""The evaluation harness: the Pixtral paper's benchmarks and protocol, resumable, against any model.

Python API::

    from pixtral.evals import EvalConfig, run_eval, compare_runs
    results = run_eval(EvalConfig(tasks=["chartqa"], endpoints=["http://localhost:8000/v1"],
                                  output_dir=Path("runs/x")))
"""

from pixtral.evals.compare import compare_runs
from pixtral.evals.config import EvalConfig
from pixtral.evals.runner import run_eval

__all__ = ["EvalConfig", "compare_runs", "run_eval"]
