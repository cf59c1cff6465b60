"""The engine's fast path (chunked prefill cutting through the merged [IMG] grid, the prefix cache, batched
decoding) on the family's shapes gives the tokens of the simple decoding loop, which the parity tests tie to
transformers' generate. The Ministral 3 shape's llama-4 scaling and YaRN depend on absolute positions, so
chunk and cache offsets must be right."""

from __future__ import annotations

import threading

import pytest
import torch

from pixtral.checkpoint.loader import save_model
from pixtral.config import with_text
from pixtral.engine.engine import Engine
from pixtral.engine.generate import decode_steps
from pixtral.engine.sampling import SamplingParams
from pixtral.engine.scheduler import SchedulerConfig
from tests.factories import MINISTRAL3_CONFIG, MISTRAL3_CONFIG, random_model
from tests.prompt.family_tekken import VOCAB, write_family_tekken
from tests.prompt.prompt_helpers import noise_image


@pytest.mark.parametrize("config", [MISTRAL3_CONFIG, MINISTRAL3_CONFIG], ids=["mistral3", "ministral3"])
def test_engine_matches_the_reference_loop(config, tmp_path):
    config = with_text(config, vocab_size=VOCAB)
    save_model(random_model(config, seed=12), tmp_path, "native")
    write_family_tekken(tmp_path, "v7", 14, 280, 2)
    engine = Engine.load(tmp_path, scheduler=SchedulerConfig(max_num_batched_tokens=7, kv_block_size=4))
    try:
        chats = [
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": noise_image(90, 61, seed=s)},
                        {"type": "image", "image": noise_image(30, 140, seed=s + 1)},
                        {"type": "text", "text": "Compare them."},
                    ],
                }
            ]
            for s in (0, 5)
        ]
        params = SamplingParams(max_tokens=16)
        expected = []
        for chat in chats:
            prompt = engine.encode(chat)
            images = [torch.from_numpy(im) for im in prompt.images]
            steps = decode_steps(engine.model, prompt.token_ids, images, params, frozenset({engine.eos_id}))
            expected.append([s.token_id for s in steps if s.token_id != engine.eos_id])
            assert len(prompt.token_ids) > 2 * 7  # several prefill chunks
        # sequential (the second time through the prefix cache), then both at once (batched decoding)
        for chat, want in zip(chats, expected, strict=True):
            assert engine.generate(chat, params).token_ids == want
            assert engine.generate(chat, params).token_ids == want
        assert engine.stats()["prefix_cache_tokens_reused"] > 0 and engine.stats()["image_cache_hits"] > 0
        got: list = [None, None]

        def run(i: int) -> None:
            got[i] = engine.generate(chats[i], params).token_ids

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got == expected
    finally:
        engine.close()
