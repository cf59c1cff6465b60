"""The SwiGLU's element-wise part inside a prefill: out-of-place (silu(a) * b, two fresh T x hidden_dim
tensors per block) beside in place (FeedForward now), alternating in one run, with the page faults per call.

    python bench/bench_swiglu.py                    # 'small' preset, 1066 tokens (a 512² image prompt)
    python bench/bench_swiglu.py --dtype bfloat16 --tokens 512

Cause of the slowdown (issue #21): each fresh 24 MB result is served by glibc from memory it had returned to
the kernel (heap trimmed, or an mmap'd block unmapped on free), so the op first touches 5,900 new zeroed 4 kB
pages, one page fault each; whether that happens depends on the allocator's state (its dynamic mmap
threshold), so the same op alone in a loop is often fast. The counts below come from getrusage.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
import torch.nn.functional as F


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main() -> None:
    from pixtral.config import preset
    from pixtral.model import feed_forward
    from pixtral.model.init import init_random_weights_
    from pixtral.model.pixtral import Pixtral

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--tokens", type=int, default=1066)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    cfg = preset(args.preset)
    model = init_random_weights_(Pixtral(cfg), seed=0).eval().to(getattr(torch, args.dtype))
    rec: dict[str, list[float]] = {"out-of-place": [], "in place": []}
    flt: dict[str, list[int]] = {"out-of-place": [], "in place": []}
    mode = ["in place"]

    def forward(self, x):  # the FFN with its element-wise part timed
        a, b = self.w1(x), self.w3(x)
        f0, t0 = faults(), time.perf_counter()
        h = F.silu(a) * b if mode[0] == "out-of-place" else F.silu(a, inplace=True).mul_(b)
        rec[mode[0]].append(time.perf_counter() - t0)
        flt[mode[0]].append(faults() - f0)
        return self.w2(h)

    feed_forward.FeedForward.forward = forward
    ids = torch.randint(1000, cfg.text.vocab_size, (1, args.tokens))
    with torch.inference_mode():
        model(ids, last_only=True)  # warm-up
        for k in rec:
            rec[k].clear(), flt[k].clear()
        for _ in range(args.rounds):
            for m in ("out-of-place", "in place"):
                mode[0] = m
                model(ids, last_only=True)
    n = args.tokens * cfg.text.hidden_dim
    print(
        f"{args.preset}, {args.dtype}, {args.tokens} tokens: silu + mul over {n / 1e6:.1f} M elements per block"
    )
    for k in rec:
        print(
            f"  {k:13s} median {1e3 * statistics.median(rec[k]):6.2f} ms per block, "
            f"{statistics.median(flt[k]):6.0f} page faults per block ({len(rec[k])} calls)"
        )


if __name__ == "__main__":
    main()
