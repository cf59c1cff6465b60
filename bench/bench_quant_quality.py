"""Quality cost of weight-only quantization: logit cosine, teacher-forced top-1 agreement and greedy-token
agreement against the float32 model, with bfloat16 as a reference point on the same metrics.

    python bench/bench_quant_quality.py            # random models (below), ~2-4 min on 2 cores
    python bench/bench_quant_quality.py --model src/pixtral/assets/default-model --accuracy 50
    python bench/bench_quant_quality.py --model runs/train-example/final --json q.json

--model (repeatable): a trained checkpoint instead of random models (random weights have no structure for a
quantizer to keep). Each variant is loaded the way `pixtral generate` loads it (Engine.load with --quantize,
the CPU kernels chosen for this machine) and compared with the float32 model on the first --conversations
held-out synthetic conversations (`pixtral synth --split test --seed 0 --max-side 192 --tasks coarse`, the
demo model's test slice), image included: logits at the last 16 prompt positions (the question and the
turn markers) compared teacher-forced; --accuracy N also answers the first N of them greedily and counts
exact matches (docs/demo-model.md's accuracy, for each variant).

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
    ap.add_argument("--model", type=Path, action="append", help="a trained checkpoint (repeatable)")
    ap.add_argument("--conversations", type=int, default=24)
    ap.add_argument("--accuracy", type=int, default=0, help="answer this many test conversations per variant")
    ap.add_argument(
        "--kernel", default=None, help="CPU kernels (engine/cpu_kernels.py): auto, onednn or aten"
    )
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.model:
        rows = [r for path in args.model for r in trained_model_rows(path, args)]
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
        return
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


VARIANTS = [  # (label, dtype, quantize, group size)
    ("bfloat16", "bfloat16", None, 128),
    ("int8", "float32", "int8", 128),
    ("int4-g32", "float32", "int4", 32),
    ("int4-g128", "float32", "int4", 128),
]


@torch.inference_mode()
def _logits(engine, sample, tail: int = 16) -> torch.Tensor:
    """The model's logits at the last `tail` prompt positions of one conversation, image included."""
    model = engine.model
    prompt = engine.encode(sample.messages)
    ids = torch.tensor([prompt.token_ids])
    pix = [torch.from_numpy(i).to(model.dtype) for i in prompt.images]
    feats = model.encode_images(pix) if pix else None
    return model(ids, image_features=feats)[0, -tail:].float()  # (tail, vocab)


def _accuracy(engine, samples) -> int:
    from pixtral.engine.sampling import SamplingParams
    from pixtral.evals.tasks.synthetic import exact_match

    params = SamplingParams(temperature=0.0, max_tokens=16)
    return sum(exact_match(engine.generate(s.messages, params).text, [s.answer]) for s in samples)


def trained_model_rows(path: Path, args) -> list[dict]:
    import torch.nn.functional as F

    from pixtral.demo.recipe import MAX_SIDE
    from pixtral.engine.engine import Engine
    from pixtral.engine.quantize import _QuantizedLinear
    from pixtral.synthetic import generate

    n = max(args.conversations, args.accuracy)
    samples = list(generate("test", n, seed=0, max_side=MAX_SIDE, tasks=["coarse"]))
    ref = Engine.load(path, dtype="float32", kernel="aten")
    ref_logits = [_logits(ref, s) for s in samples[: args.conversations]]
    base = {"model": str(path), "weights": "float32", "kernels": str(ref.kernels)}
    rows = [{**base, "correct": _accuracy(ref, samples[: args.accuracy]), "of": args.accuracy}]
    ref.close()
    print(json.dumps(rows[-1]), flush=True)
    for label, dtype, quantize, group in VARIANTS:
        eng = Engine.load(path, dtype=dtype, quantize=quantize, group_size=group, kernel=args.kernel)
        cos, top1 = [], []
        for s, a in zip(samples[: args.conversations], ref_logits, strict=True):
            b = _logits(eng, s)
            cos += F.cosine_similarity(a, b, dim=-1).tolist()
            top1 += (a.argmax(-1) == b.argmax(-1)).tolist()
        rows.append(
            {
                "model": str(path),
                "weights": label,
                "kernels": str(eng.kernels),
                "quantized_layers": sum(isinstance(m, _QuantizedLinear) for m in eng.model.modules()),
                "logit_cosine_mean": round(sum(cos) / len(cos), 6),
                "logit_cosine_min": round(min(cos), 6),
                "top1_agreement": round(sum(top1) / len(top1), 4),
                "positions": len(cos),
                "correct": _accuracy(eng, samples[: args.accuracy]),
                "of": args.accuracy,
            }
        )
        eng.close()
        print(json.dumps(rows[-1]), flush=True)
    print(
        f"\n{path}: against float32 on {args.conversations} held-out conversations (last 16 prompt positions)"
    )
    print("| weights | quantized layers | logit cosine mean / min | top-1 agreement | accuracy |")
    print("|---|---|---|---|---|")
    for r in rows:
        cos = (
            f"{r['logit_cosine_mean']:.5f} / {r['logit_cosine_min']:.5f}"
            if "positions" in r
            else "(reference)"
        )
        acc = f"{int(r['correct'])}/{r['of']}" if r["of"] else ""
        print(
            f"| {r['weights']} | {r.get('quantized_layers', '')} | {cos} | {r.get('top1_agreement', '')} | {acc} |"
        )
    return rows


if __name__ == "__main__":
    main()
