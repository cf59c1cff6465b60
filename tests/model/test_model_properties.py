"""Properties of the model that hold whatever the weights: image isolation, merge rules, packing, KV cache."""

from __future__ import annotations

import pytest
import torch

from pixtral.engine.generate import decode_steps
from pixtral.engine.sampling import SamplingParams
from pixtral.model.kv_cache import causal_mask
from pixtral.model.pixtral import ImageTokenMismatch, no_images
from tests.factories import TEST_CONFIG, prompt_with_images


@torch.no_grad()
def test_changing_one_image_leaves_other_images_features_unchanged(test_model):
    _, images = prompt_with_images([(2, 3), (2, 3), (4, 1)], seed=5)  # two same-size images share a batch
    before = test_model.vision_encoder(images)
    changed = [images[0], images[1] + torch.randn_like(images[1]), images[2]]
    after = test_model.vision_encoder(changed)
    n0, n1 = 6, 6
    assert torch.equal(before[:n0], after[:n0])
    assert torch.equal(before[n0 + n1 :], after[n0 + n1 :])
    assert not torch.allclose(before[n0 : n0 + n1], after[n0 : n0 + n1])


@torch.no_grad()
def test_packed_features_equal_each_image_encoded_alone(test_model):
    _, images = prompt_with_images([(1, 4), (3, 2), (3, 2)], seed=6)
    packed = test_model.vision_encoder(images)
    alone = torch.cat([test_model.vision_encoder([im]) for im in images])
    assert (packed - alone).abs().max() <= 1e-5


@torch.no_grad()
def test_break_and_end_tokens_keep_their_embeddings(test_model):
    ids, images = prompt_with_images([(2, 2)], seed=1)
    h = test_model.embed(ids, test_model.encode_images(images))
    v = TEST_CONFIG.vision
    for special in (v.image_break_token_id, v.image_end_token_id):
        pos = (ids[0] == special).nonzero()[0, 0]
        assert torch.equal(h[0, pos], test_model.tok_embeddings.weight[special])
    img_pos = (ids[0] == v.image_token_id).nonzero()[:, 0]
    assert torch.equal(h[0, img_pos], test_model.encode_images(images))


def test_image_token_count_mismatch_is_an_error(test_model):
    ids, images = prompt_with_images([(2, 2)], seed=1)
    with pytest.raises(ImageTokenMismatch, match="4 \\[IMG\\] tokens but the images give 6"):
        test_model(ids, [torch.randn(3, 32, 48)])
    with pytest.raises(ImageTokenMismatch):
        test_model(ids)  # image tokens without images


@torch.no_grad()
def test_a_generated_img_token_is_a_plain_token(test_model):
    """Image features go to prompt positions only: an [IMG] id outside the image mask keeps its embedding."""
    ids, images = prompt_with_images([(2, 2)], seed=1)
    img = TEST_CONFIG.vision.image_token_id
    prompt_mask = ids == img
    ids = torch.cat([ids, torch.tensor([[img, 1050, img]])], dim=1)  # three "generated" tokens
    mask = torch.cat([prompt_mask, torch.zeros(1, 3, dtype=torch.bool)], dim=1)
    h = test_model.embed(ids, test_model.encode_images(images), mask)
    assert torch.equal(h[0, -1], test_model.tok_embeddings.weight[img])
    assert torch.equal(h[0, -3], test_model.tok_embeddings.weight[img])
    assert torch.equal(h[0, mask[0]], test_model.encode_images(images))
    generated = ids[:, -3:]
    plain = test_model(generated, image_mask=no_images(generated))  # no features, no mismatch
    assert plain.shape == (1, 3, TEST_CONFIG.text.vocab_size)


@torch.no_grad()
def test_packed_rows_with_positions_and_mask_equal_separate_forwards(test_model):
    a, img_a = prompt_with_images([(2, 1)], seed=2)
    b, img_b = prompt_with_images([(1, 3)], seed=3)
    la, lb = a.shape[1], b.shape[1]
    packed = torch.cat([a, b], dim=1)
    positions = torch.cat([torch.arange(la), torch.arange(lb)])[None]
    mask = torch.zeros(la + lb, la + lb, dtype=torch.bool)
    mask[:la, :la] = causal_mask(la, la, "cpu")
    mask[la:, la:] = causal_mask(lb, lb, "cpu")
    out = test_model(packed, img_a + img_b, positions=positions, mask=mask[None, None])
    assert (out[:, :la] - test_model(a, img_a)).abs().max() <= 1e-4
    assert (out[:, la:] - test_model(b, img_b)).abs().max() <= 1e-4


@pytest.mark.parametrize("grids", [[], [(2, 3), (1, 2)]], ids=["text", "images"])
@torch.no_grad()
def test_incremental_decoding_log_probs_equal_one_full_pass(test_model, grids):
    ids, images = prompt_with_images(grids, seed=9)
    params = SamplingParams(max_tokens=12, temperature=0.8, seed=4)  # sampled: exercises arbitrary tokens
    steps = list(decode_steps(test_model, ids[0].tolist(), images, params))
    generated = torch.tensor([[s.token_id for s in steps]])
    full = test_model(torch.cat([ids, generated], dim=1), images)[0]  # (T_prompt + n, vocab)
    n_prompt = ids.shape[1]
    full_logprobs = torch.log_softmax(full[n_prompt - 1 : -1], dim=-1)
    step_logprobs = torch.log_softmax(torch.stack([s.logits for s in steps]), dim=-1)
    diff = (full_logprobs - step_logprobs).abs().max().item()
    print(f"\nincremental vs full log-prob max abs diff [{'images' if grids else 'text'}]: {diff:.2e}")
    assert diff <= 1e-4


@torch.no_grad()
def test_same_seed_same_tokens_different_seed_differs(test_model):
    ids, images = prompt_with_images([(1, 2)], seed=3)

    def run(seed: int) -> list[int]:
        params = SamplingParams(max_tokens=16, temperature=1.5, seed=seed)
        return [s.token_id for s in decode_steps(test_model, ids[0].tolist(), images, params)]

    assert run(1) == run(1)
    assert run(1) != run(2)
