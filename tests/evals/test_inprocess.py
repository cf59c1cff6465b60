"""The in-process backend: a small task through pixtral.engine (the bundled default model), no HTTP."""

from __future__ import annotations

import json

from pixtral.evals import EvalConfig, run_eval


def test_docvqa_and_mmmu_through_the_engine(fixtures, tmp_path):
    from pixtral.checkpoint.random_init import create_random_checkpoint
    from pixtral.config import preset

    model = create_random_checkpoint(tmp_path / "tiny", preset("tiny"), seed=0)  # marked untrained
    cfg = EvalConfig(tasks=["docvqa", "mmmu"], output_dir=tmp_path / "inproc", in_process=True, engine_model=str(model),
                     data_dir=fixtures.root, limit=2, bootstrap=50, progress=False, engine_dtype="float32")  # fmt: skip
    cfg_mmmu_tokens = 6  # keep the CoT task short on CPU: a custom prompt file caps max_tokens
    prompts = tmp_path / "short.json"
    prompts.write_text(json.dumps({"tasks": {"mmmu": {"template": "{question}\nAnswer:", "max_tokens": cfg_mmmu_tokens},
                                             "mmmu_open": {"template": "{question}\nAnswer:", "max_tokens": cfg_mmmu_tokens}}}))  # fmt: skip
    cfg.prompts = str(prompts)
    results = run_eval(cfg)
    assert results["provenance"]["backend"] == "in-process"
    assert results["provenance"]["model_untrained"] is True  # `pixtral init` writes the UNTRAINED marker
    assert results["run"]["requests"]["generated"] == 4
    for task in ("docvqa", "mmmu"):
        t = results["tasks"][task]
        assert t["counts"]["answered"] == 2 and t["counts"]["errors"] == 0
    items = [json.loads(x) for x in (tmp_path / "inproc" / "docvqa.items.jsonl").read_text().splitlines()]

    # the stored answer is exactly what the engine generates for that request (greedy, deterministic)
    from pixtral.engine import Engine, SamplingParams
    from pixtral.evals.data import load_local
    from pixtral.evals.prompts import load_prompt_set
    from pixtral.evals.tasks import get_task
    from pixtral.evals.types import to_openai_messages

    task = get_task("docvqa")
    rows = load_local(fixtures.root / "docvqa", "validation")
    item = task.build_items(0, rows[0], load_prompt_set("explicit"), "fixed", "validation")[0]
    engine = Engine.load(model, dtype="float32")
    direct = engine.generate(
        to_openai_messages(item.messages), SamplingParams(max_tokens=10, temperature=0.0)
    )
    assert items[0]["item_id"] == item.item_id and items[0]["answer"] == direct.text

    again = run_eval(cfg)  # resumes: the engine is loaded but asked nothing
    assert again["run"]["requests"]["generated"] == 0 and again["tasks"] == results["tasks"]
