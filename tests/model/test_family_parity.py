"""Numerical parity of the Pixtral family's shapes with transformers' Mistral3ForConditionalGeneration.

- Mistral Small 3.1/3.2 / Magistral: Mistral3 with a Mistral text model (projector norm, 2x2 patch merger).
- Ministral 3 / Devstral Small 2: Mistral3 with a Ministral3 text model (YaRN, llama-4 query scaling with an
  original length of 24, so the prompts cross several scaling steps; tied embeddings).

Each shape is checked both ways: our random weights written by our HF writer and loaded by transformers (and
by us from native and from HF), and transformers' own random model written by save_pretrained (its >= 5
spelling), loaded by us from HF and from a native copy made by `convert`. Images have odd token grids (3x5,
1x7, ...), several per prompt. Tolerance: fp32 max abs diff <= 1e-4 (printed with -s).
"""

from __future__ import annotations

import pytest
import torch

from pixtral.checkpoint.loader import convert, load_model, save_model
from pixtral.config import PixtralConfig
from tests.factories import MINISTRAL3_CONFIG, MISTRAL3_CONFIG, family_prompt, random_model
from tests.model.test_parity_transformers import hf_inputs, max_diff

transformers = pytest.importorskip("transformers")

TOL = 1e-4
SHAPES = {"mistral3": MISTRAL3_CONFIG, "ministral3": MINISTRAL3_CONFIG}
# [IMG] grids (rows x columns of merged blocks): odd sizes, one-block-wide and -tall images, 1 to 3 images
IMAGE_SETS = [[(3, 5)], [(1, 7), (4, 2)], [(5, 1), (2, 2), (3, 3)]]


@pytest.fixture(scope="module", params=list(SHAPES))
def family(request, tmp_path_factory):
    """(name, config, {source: our model}, transformers model) on identical weights, both directions."""
    name, config = request.param, SHAPES[request.param]
    ours = random_model(config, seed=5)
    native_dir, hf_dir = tmp_path_factory.mktemp(f"{name}-native"), tmp_path_factory.mktemp(f"{name}-hf")
    save_model(ours, native_dir, "native")
    save_model(ours, hf_dir, "hf")
    hf = transformers.Mistral3ForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    models = {"native": load_model(native_dir)[0], "hf": load_model(hf_dir)[0]}
    return name, config, models, hf


def transformers_random_model(config: PixtralConfig, folder):
    """transformers' own random Mistral3 (perturbed: its N(0, 0.02) init is too flat to discriminate),
    saved with save_pretrained."""
    cfg = transformers.Mistral3Config.from_dict(config.to_hf_config())
    torch.manual_seed(0)
    hf = transformers.Mistral3ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(folder)
    return hf


def hf_image_features(hf, images: list[torch.Tensor]) -> torch.Tensor:
    inputs = hf_inputs(images)
    return torch.cat(
        hf.model.get_image_features(
            inputs["pixel_values"], image_sizes=inputs["image_sizes"], vision_feature_layer=-1
        ).pooler_output
    )


@pytest.mark.parametrize("images_index", range(len(IMAGE_SETS)))
@pytest.mark.parametrize("source", ["native", "hf"])
@torch.no_grad()
def test_image_features_and_logits_match_transformers(family, source, images_index):
    name, config, models, hf = family
    ours = models[source]
    ids, images = family_prompt(IMAGE_SETS[images_index], config, seed=images_index)
    # the ViT output is identical in shape and value; the merger then quarters the count
    inputs = hf_inputs(images)
    vision_hf = hf.model.vision_tower(inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    diffs = {
        "vision": max_diff(ours.vision_encoder(images), vision_hf.last_hidden_state[0]),
        "projector": max_diff(ours.encode_images(images), hf_image_features(hf, images)),
        "logits": max_diff(ours(ids, images), hf(input_ids=ids, **inputs).logits),
    }
    print(f"\nmax abs diff [{name}, {source}, images {IMAGE_SETS[images_index]}]: {diffs}")
    assert all(d <= TOL for d in diffs.values()), diffs
    if config.text.llama_4_scaling:  # the prompt crosses at least one scaling step
        assert ids.shape[1] > config.text.llama_4_scaling.original_max_position_embeddings


@torch.no_grad()
def test_greedy_generation_matches_transformers_generate(family):
    from pixtral.engine.generate import greedy_generate_ids

    _, config, models, hf = family
    ids, images = family_prompt([(2, 3), (3, 1)], config, seed=11)
    expected = hf.generate(
        input_ids=ids,
        **hf_inputs(images),
        max_new_tokens=40,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        attention_mask=torch.ones_like(ids),
    )[0, ids.shape[1] :].tolist()
    got = greedy_generate_ids(models["native"], ids[0].tolist(), images, max_tokens=40)
    assert len(expected) == 40
    assert got == expected


@pytest.mark.parametrize("name", list(SHAPES))
@torch.no_grad()
def test_loads_transformers_checkpoint_directly_and_converted_to_native(name, tmp_path):
    config = SHAPES[name]
    hf = transformers_random_model(config, tmp_path / "hf")
    from_hf, ckpt = load_model(tmp_path / "hf")
    assert ckpt.format == "hf" and ckpt.config == config
    convert(tmp_path / "hf", tmp_path / "native", "native")
    from_native, ckpt_native = load_model(tmp_path / "native")
    assert ckpt_native.format == "native" and ckpt_native.config == config
    ids, images = family_prompt([(2, 3), (1, 1), (3, 2)], config, seed=7)
    expected = hf(input_ids=ids, **hf_inputs(images)).logits
    diffs = {
        "hf": max_diff(from_hf(ids, images), expected),
        "native": max_diff(from_native(ids, images), expected),
    }
    print(f"\nmax abs diff [{name}, transformers' weights]: {diffs}")
    assert all(d <= TOL for d in diffs.values()), diffs


@torch.no_grad()
def test_pixtral_large_layout_matches_transformers_llava(tmp_path):
    """Pixtral-Large-Instruct-2411: the 12B's structure with no adapter bias and [IMG_BREAK] / [IMG_END]
    = 14 / 15; loaded by transformers' Llava from our HF writer, and by us from native and HF."""
    from dataclasses import replace

    from tests.factories import TEST_CONFIG, prompt_with_images

    config = replace(
        TEST_CONFIG,
        vision=replace(
            TEST_CONFIG.vision, adapter_bias=False, image_break_token_id=14, image_end_token_id=15
        ),
    )
    ours = random_model(config, seed=9)
    save_model(ours, tmp_path / "native", "native")
    save_model(ours, tmp_path / "hf", "hf")
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(
        tmp_path / "hf", dtype=torch.float32
    ).eval()
    assert not hf.config.multimodal_projector_bias
    ids, images = prompt_with_images([(3, 5), (1, 4), (2, 1)], seed=2, config=config)
    assert 14 in ids and 15 in ids
    expected = hf(input_ids=ids, **hf_inputs(images)).logits
    for fmt in ("native", "hf"):
        model, ckpt = load_model(tmp_path / fmt)
        assert ckpt.config == config
        diff = max_diff(model(ids, images), expected)
        print(f"\nmax abs diff [pixtral-large layout, {fmt}]: {diff}")
        assert diff <= TOL
