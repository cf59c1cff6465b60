"""Tensor parallelism from a sharded Hugging Face checkpoint (q/k permuted on read, each rank reading its
block across shard files): 2 ranks with int8 and int4 (groups of 32) weight-only quantization of each shard against the same mode in
one process (greedy tokens identical), and 4 ranks in float32 on a config with 4 KV heads (logits <= 1e-5)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pixtral.checkpoint.formats import write_checkpoint
from pixtral.checkpoint.loader import load_model, open_checkpoint, save_model
from pixtral.engine.quantize import load_quantized
from tests.factories import TEST_CONFIG, prompt_with_images, random_model
from tests.parallel.conftest import prefill_and_decode, start_group

GRIDS = [[], [(2, 3)], [(1, 4), (3, 2), (2, 2)]]


def _hf_sharded(root, config, seed):
    save_model(random_model(config, seed=seed), root / "native", "native")
    ckpt = open_checkpoint(root / "native")
    write_checkpoint(root / "hf", "hf", ckpt.config, ckpt.tensors(), max_shard_bytes=80_000)
    return root / "hf"


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_over_two_ranks_from_sharded_hf_gives_the_one_process_tokens(tmp_path, mode):
    # halves the int4 kernel takes (output rows in multiples of 16, input columns in whole groups of 32), so
    # every layer is quantized on both sides (a half it refuses would stay float over 2 ranks only)
    config = replace(TEST_CONFIG, text=replace(TEST_CONFIG.text, vocab_size=1280, hidden_dim=128))
    folder = _hf_sharded(tmp_path, config, seed=12)
    reference, _, summary = load_quantized(folder, mode, dtype="float32", group_size=32)
    parallel = start_group(folder, 2, quantize=mode)  # int4 groups of 32
    try:
        kind = {"int8": "Int8Linear", "int4": "Int4Linear"}[mode]
        assert parallel.shard.layers[0].attention.wo.inner.__class__.__name__ == kind
        for grids in GRIDS:
            ids, images = prompt_with_images(grids, seed=20 + len(grids))
            want, want_tokens = prefill_and_decode(reference, ids, images, steps=6)
            got, got_tokens = prefill_and_decode(parallel, ids, images, steps=6)
            assert got_tokens == want_tokens, grids
    finally:
        parallel.close()


def test_four_ranks_on_four_kv_heads_match_one_process(tmp_path):
    config = replace(TEST_CONFIG, text=replace(TEST_CONFIG.text, n_kv_heads=4))
    folder = _hf_sharded(tmp_path, config, seed=13)
    reference, _ = load_model(folder)
    parallel = start_group(folder, 4)
    try:
        for grids in GRIDS[1:]:
            ids, images = prompt_with_images(grids, seed=30 + len(grids))
            want, want_tokens = prefill_and_decode(reference, ids, images)
            got, got_tokens = prefill_and_decode(parallel, ids, images)
            assert got_tokens == want_tokens
            assert max(float((a - b).abs().max()) for a, b in zip(want, got, strict=True)) <= 1e-5
    finally:
        parallel.close()
