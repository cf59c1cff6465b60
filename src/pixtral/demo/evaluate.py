"""`pixtral eval` with the `synthetic` task registered (until pixtral.evals.tasks.TASKS lists it).

    python -m pixtral.demo.evaluate --task synthetic --endpoint http://127.0.0.1:8765/v1 \
        --data-dir runs/demo/coarse/test --split test --output-dir runs/demo/eval

Every argument is `pixtral eval run`'s.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from pixtral.evals.cli import main as eval_main
    from pixtral.synthetic.eval_task import register

    register()
    return eval_main(["run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
