"""Decode attention alone, per layer: the row-by-row path (one SDPA per sequence over its own buffer) beside
the KV pool's one call (indexed write, a view of the used slots, GQA as G queries per KV head, a mask).

    .venv/bin/python bench/bench_decode_attention.py        # 'small' preset shapes: 16 heads, 4 KV, hd 128

One thread, best of 150: the machine is shared, so the figures are indicative. Both paths give the same
output (checked, 1e-5) before they are timed.
"""

import time

import torch
import torch.nn.functional as F

torch.manual_seed(0)
torch.set_num_threads(1)
H, KV, HD, N, SLOTS = 16, 4, 128, 512, 32


def best(fn, repeat: int = 150) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def measure(B: int) -> None:  # noqa: N803 (B rows, as in the shape comments)
    q, k, v = torch.randn(B, 1, H, HD), torch.randn(B, 1, KV, HD), torch.randn(B, 1, KV, HD)
    own_k = [torch.randn(N + 8, KV, HD) for _ in range(B)]
    own_v = [torch.randn(N + 8, KV, HD) for _ in range(B)]

    def rows():
        out = torch.empty_like(q)
        for r in range(B):
            own_k[r][N], own_v[r][N] = k[r, 0], v[r, 0]
            out[r] = F.scaled_dot_product_attention(
                q[r].transpose(0, 1)[None],
                own_k[r][: N + 1].transpose(0, 1)[None],
                own_v[r][: N + 1].transpose(0, 1)[None],
                enable_gqa=True,
            )[0].transpose(0, 1)
        return out

    pool_k, pool_v = torch.randn(SLOTS, N + 8, KV, HD), torch.randn(SLOTS, N + 8, KV, HD)
    pool_k[:B], pool_v[:B] = torch.stack(own_k), torch.stack(own_v)
    slots, positions = torch.arange(B), torch.full((B,), N)
    mask = (torch.arange(N + 1)[None] <= positions[:, None])[:, None, None]

    def pooled():
        pool_k[slots, positions], pool_v[slots, positions] = k[:, 0], v[:, 0]
        queries = q.new_zeros(B, KV, H // KV, HD)
        queries[slots] = q.view(B, KV, H // KV, HD)
        keys, values = pool_k[:B, : N + 1].transpose(1, 2), pool_v[:B, : N + 1].transpose(1, 2)
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask)
        return out[slots].reshape(B, 1, H, HD)

    torch.testing.assert_close(rows(), pooled(), rtol=1e-4, atol=1e-5)
    print(
        f"{B:>2} rows x {N} keys: row by row {best(rows):7.2f} ms, KV pool {best(pooled):7.2f} ms per layer"
    )


for rows_in_batch in (1, 8, 32):
    measure(rows_in_batch)
