"""Quality cost of weight-only quantization: logit cosine, teacher-forced top-1 agreement and greedy-token
agreement against the float32 model, for random models of a few sizes and weight scales (no trained
weights are available here), with bfloat16 as a reference point on the same metrics.

    python bench/bench_quant_quality.py            # ~2-4 min on 2 cores
    python bench/bench_quant_quality.py --json q.json

Models: 'test' is tests/factories.py's model (std 0.15, jittered norms: peaked logits, errors amplified);
'mid-0.02' is a 4-layer dim-512 model at `pixtral init`'s std 0.02 (near-uniform logits, so top-1 flips on
tiny differences); 'mid-0.05' the same shape at std 0.05 with jittered norms.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def configs():
    from pixtral.config import PixtralConfig, TextConfig, VisionConfig
    from tests.factories import TEST_CONFIG

    mid = PixtralConfig(
        text=TextConfig(
            dim=512, n_layers=4, head_dim=64, hidden_dim=1536, n_heads=8, n_kv_heads=2, vocab_size=8192
        ),
        vision=VisionConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2
        ),
    )
    return [("test", TEST_CONFIG, 0.15, 0.2), ("mid-0.02", mid, 0.02, 0.0), ("mid-0.05", mid, 0.05, 0.2)]


def main() -> None:
    from pixtral.engine.quantize import compare_models, quantize_model_, random_prompts
    from pixtral.model.init import init_random_weights_
    from pixtral.model.pixtral import Pixtral

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    variants = [("bfloat16", None, None), ("int8", "int8", 128)] + [
        (f"int4-g{g}", "int4", g) for g in (32, 64, 128)
    ]
    for model_name, config, std, jitter in configs():

        def fresh(config=config, std=std, jitter=jitter):
            return init_random_weights_(Pixtral(config), seed=0, std=std, norm_jitter=jitter).eval()

        ref = fresh()
        prompts = random_prompts(config.text.vocab_size, args.prompts, args.prompt_len, seed=1)
        for label, mode, group in variants:
            model = fresh()
            skipped = []
            if mode is None:
                model = model.to(torch.bfloat16)
            else:
                skipped = quantize_model_(model, mode, group).skipped
            r = compare_models(ref, model, prompts, args.new_tokens).as_dict()
            rows.append({"model": model_name, "weights": label, "skipped": len(skipped), **r})
            print(json.dumps(rows[-1]), flush=True)
    print(
        "\n| model | weights | logit cosine mean / min | top-1 (teacher-forced) | greedy tokens | greedy prefix |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        note = f" ({r['skipped']} layers kept)" if r["skipped"] else ""
        print(
            f"| {r['model']} | {r['weights']}{note} | {r['logit_cosine_mean']:.5f} / {r['logit_cosine_min']:.5f} | "
            f"{r['top1_agreement']:.3f} | {r['greedy_agreement']:.3f} | {r['greedy_prefix']:.3f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
