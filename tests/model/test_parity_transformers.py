"""Numerical parity with transformers' LlavaForConditionalGeneration (Pixtral vision + Mistral text).

The same random weights run in both: ours saved in HF format by our writer and loaded by transformers, and
transformers' own random model saved by transformers and loaded by our loader. Tolerance: fp32 max abs diff
<= 1e-4 (observed diffs are printed with -s).
"""

from __future__ import annotations

import pytest
import torch

from pixtral.checkpoint.loader import load_model, save_model
from tests.factories import TEST_CONFIG, prompt_with_images, random_model

transformers = pytest.importorskip("transformers")

TOL = 1e-4
# 1, 2 and 3 images of different sizes, including 1-patch-wide and 1-patch-tall images.
IMAGE_SETS = {
    "one": [(3, 5)],
    "two": [(1, 7), (4, 2)],
    "three": [(6, 1), (2, 2), (3, 5)],
}


def hf_inputs(images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Zero-pad to a common size and pass image_sizes (height, width), as the HF processor does."""
    hmax = max(im.shape[1] for im in images)
    wmax = max(im.shape[2] for im in images)
    pixel_values = torch.zeros(len(images), 3, hmax, wmax)
    for i, im in enumerate(images):
        pixel_values[i, :, : im.shape[1], : im.shape[2]] = im
    return {"pixel_values": pixel_values, "image_sizes": torch.tensor([list(im.shape[1:]) for im in images])}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(our model loaded from native, our model loaded from HF, transformers model) on identical weights."""
    ours = random_model(seed=1)
    native_dir = tmp_path_factory.mktemp("native")
    hf_dir = tmp_path_factory.mktemp("hf")
    save_model(ours, native_dir, "native")
    save_model(ours, hf_dir, "hf")
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    from_native, _ = load_model(native_dir)
    from_hf, _ = load_model(hf_dir)
    return from_native, from_hf, hf


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("images_key", list(IMAGE_SETS))
@pytest.mark.parametrize("fmt", ["native", "hf"])
@torch.no_grad()
def test_vision_adapter_and_logits_match_transformers(pair, images_key, fmt):
    ours = pair[0] if fmt == "native" else pair[1]
    hf = pair[2]
    ids, images = prompt_with_images(IMAGE_SETS[images_key], seed=len(images_key))
    inputs = hf_inputs(images)

    vision_ours = ours.vision_encoder(images)
    vision_hf = hf.model.vision_tower(
        inputs["pixel_values"], image_sizes=inputs["image_sizes"]
    ).last_hidden_state[0]
    adapter_ours = ours.encode_images(images)
    adapter_hf = torch.cat(
        hf.model.get_image_features(
            inputs["pixel_values"],
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            image_sizes=inputs["image_sizes"],
        ).pooler_output
    )
    logits_ours = ours(ids, images)
    logits_hf = hf(input_ids=ids, **inputs).logits

    diffs = {
        k: max_diff(a, b)
        for k, a, b in [
            ("vision", vision_ours, vision_hf),
            ("adapter", adapter_ours, adapter_hf),
            ("logits", logits_ours, logits_hf),
        ]
    }
    print(f"\nmax abs diff [{fmt}, {images_key}]: {diffs}")
    assert all(d <= TOL for d in diffs.values()), diffs
    assert logits_ours.abs().max() > 1.0  # the comparison is not between near-zero tensors


@torch.no_grad()
def test_text_only_logits_match_transformers(pair):
    ours, _, hf = pair
    ids = torch.randint(
        1000, TEST_CONFIG.text.vocab_size, (2, 23), generator=torch.Generator().manual_seed(3)
    )
    assert max_diff(ours(ids), hf(input_ids=ids).logits) <= TOL


@torch.no_grad()
def test_loads_a_checkpoint_written_by_transformers(tmp_path):
    """The other direction: transformers' own random model and save_pretrained (its >= 5 spelling)."""
    cfg = transformers.LlavaConfig.from_dict(TEST_CONFIG.to_hf_config())
    torch.manual_seed(0)
    hf = transformers.LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():  # HF's own init is N(0, 0.02): too flat to discriminate
            p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path)
    ours, ckpt = load_model(tmp_path)
    assert ckpt.format == "hf"
    ids, images = prompt_with_images([(2, 3), (1, 1)], seed=7)
    assert max_diff(ours(ids, images), hf(input_ids=ids, **hf_inputs(images)).logits) <= TOL


@torch.no_grad()
def test_greedy_generation_matches_transformers_generate(pair):
    from pixtral.engine.generate import greedy_generate_ids

    ours, _, hf = pair
    ids, images = prompt_with_images([(2, 4), (3, 1)], seed=11)
    expected = hf.generate(
        input_ids=ids,
        **hf_inputs(images),
        max_new_tokens=32,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        attention_mask=torch.ones_like(ids),
    )[0, ids.shape[1] :].tolist()
    got = greedy_generate_ids(ours, ids[0].tolist(), images, max_tokens=32)
    assert len(expected) == 32
    assert got == expected
