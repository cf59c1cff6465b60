"""Structured output's per-token overhead: decode time per token with a JSON-schema grammar (xgrammar) beside
the same decode without one, from the same run, on a random model of a preset (default `small`, ~1.1 B).

    python bench/bench_structured.py [--preset small] [--tokens 32] [--dtype bfloat16] [--device cpu]

Both runs generate exactly --tokens tokens (EOS biased away), sampled at temperature 1 with the same seed; the
time per token is measured between the first and the last token, so the prefill is left out. The issue's
target: the grammar adds at most 10% to the decode time. On a busy shared machine the figures are indicative.
"""

from __future__ import annotations

import argparse
import time

import torch

from pixtral.config import preset
from pixtral.engine import Engine, SamplingParams
from pixtral.engine.structured import GrammarState, StructuredOutput
from pixtral.model.init import init_random_weights_
from pixtral.model.pixtral import Pixtral
from pixtral.prompt.tokenizer import packaged_tokenizer

SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
MESSAGES = [{"role": "user", "content": "Describe a sunny day in one long sentence."}]


def per_token_ms(engine: Engine, params: SamplingParams) -> tuple[float, int]:
    stamps = []
    for event in engine.stream(MESSAGES, params):
        stamps += [time.perf_counter()] * len(event.token_ids)
    n = len(stamps)
    return (stamps[-1] - stamps[0]) * 1000 / max(n - 1, 1), n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="small")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = Pixtral(preset(args.preset)).to(dtype=getattr(torch, args.dtype))
    model = init_random_weights_(model, seed=0, std=0.02).to(args.device).eval()
    engine = Engine(model, packaged_tokenizer(), model_name=args.preset)
    eos = {engine.eos_id: -100.0}
    base = dict(max_tokens=args.tokens, temperature=1.0, seed=0, logit_bias=eos)
    structured = StructuredOutput.json_schema(SCHEMA)

    per_token_ms(engine, SamplingParams(**{**base, "max_tokens": 4}))  # warm-up (and the grammar compiler)
    per_token_ms(engine, SamplingParams(**{**base, "max_tokens": 4}, structured=structured))
    free_ms, n_free = per_token_ms(engine, SamplingParams(**base))
    grammar_ms, n_grammar = per_token_ms(engine, SamplingParams(**base, structured=structured))

    # The mask alone: fill the bitmask and apply it to one row of logits, as the scheduler does per token.
    state = GrammarState(engine._grammars.compile(structured))
    logits = torch.randn(1, model.config.text.vocab_size, device=args.device)
    for token in packaged_tokenizer().instruct_tokenizer.tokenizer.encode(
        '{"text": "a', bos=False, eos=False
    ):
        state.accept(token)
    start = time.perf_counter()
    for _ in range(50):
        state.mask_(logits)
    mask_ms = (time.perf_counter() - start) * 1000 / 50

    print(
        f"preset {args.preset}, {args.dtype} on {args.device}, vocab {model.config.text.vocab_size}, "
        f"{torch.get_num_threads()} threads (indicative: a shared machine)"
    )
    print(f"decode without a grammar : {free_ms:8.1f} ms/token over {n_free} tokens")
    print(f"decode with a JSON schema: {grammar_ms:8.1f} ms/token over {n_grammar} tokens")
    print(f"overhead                 : {100 * (grammar_ms - free_ms) / free_ms:+8.1f} %   (target <= +10 %)")
    print(
        f"the mask alone           : {mask_ms:8.2f} ms/token = {100 * mask_ms / free_ms:.1f} % of a free decode step"
    )
    engine.close()


if __name__ == "__main__":
    main()
