"""The ablation's baseline front end: learned absolute positions, no RoPE-2D, square inputs, and a prompt
whose [IMG] block matches the square."""

import json

import pytest
import torch
from PIL import Image

from pixtral.config import PixtralConfig, TextConfig, VisionConfig
from pixtral.demo.fixed_resolution import (
    FixedResolutionEncoder,
    fixed_resolution_model,
    load_fixed_resolution,
    resize_jsonl,
    swap_in_fixed_encoder,
)
from pixtral.demo.recipe import demo_config
from pixtral.model.pixtral import Pixtral
from pixtral.model.vision_encoder import VisionEncoder

TINY = PixtralConfig(
    text=TextConfig(dim=32, n_layers=1, head_dim=16, hidden_dim=64, n_heads=2, n_kv_heads=1, vocab_size=1200),
    vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
)


def test_parameter_count_within_two_percent_of_the_native_arm():
    config = demo_config()
    native = sum(p.numel() for p in Pixtral(config).parameters())
    fixed = sum(p.numel() for p in fixed_resolution_model(config).parameters())
    assert fixed - native == 8 * 8 * config.vision.hidden_size
    assert abs(fixed - native) / native < 0.02


def test_positions_come_from_the_table_not_rope():
    torch.manual_seed(0)
    enc = FixedResolutionEncoder(TINY.vision, side=64)
    img = torch.randn(3, 64, 64)
    out = enc([img])
    assert out.shape == (16, 32)
    # Without a position table the encoder is permutation-equivariant over patches: no RoPE is left.
    with torch.no_grad():
        enc.pos_embed.zero_()
    a = enc([img])
    swapped = img.clone()
    swapped[:, :16, :16], swapped[:, :16, 16:32] = img[:, :16, 16:32], img[:, :16, :16]
    b = enc([swapped])
    torch.testing.assert_close(a[0], b[1])
    torch.testing.assert_close(a[1], b[0])
    # With a table, the same patch at two places gives two different features.
    with torch.no_grad():
        enc.pos_embed.normal_()
    c, d = enc([img]), enc([swapped])
    assert not torch.allclose(c[0], d[1], atol=1e-4)


def test_native_encoder_is_not_permutation_equivariant():
    """The contrast the ablation relies on: the stock encoder sees positions through RoPE-2D."""
    torch.manual_seed(0)
    enc = VisionEncoder(TINY.vision)
    img = torch.randn(3, 64, 64)
    swapped = img.clone()
    swapped[:, :16, :16], swapped[:, :16, 16:32] = img[:, :16, 16:32], img[:, :16, :16]
    assert not torch.allclose(enc([img])[0], enc([swapped])[1], atol=1e-4)


def test_larger_than_the_square_is_refused():
    enc = FixedResolutionEncoder(TINY.vision, side=64)
    with pytest.raises(ValueError, match="resize"):
        enc([torch.zeros(3, 80, 64)])


def test_swap_keeps_weights_and_round_trips_through_a_checkpoint(tmp_path):
    from pixtral.checkpoint.formats import write_checkpoint

    model = Pixtral(TINY)
    conv = model.vision_encoder.patch_conv.weight.clone()
    swap_in_fixed_encoder(model, side=64)
    assert torch.equal(model.vision_encoder.patch_conv.weight, conv)
    write_checkpoint(tmp_path, "native", TINY, model.state_dict().items())
    back = load_fixed_resolution(tmp_path, side=64)
    assert torch.equal(back.vision_encoder.pos_embed, model.vision_encoder.pos_embed)


def test_resize_jsonl_gives_the_square_token_block(tmp_path):
    from pixtral.prompt.tokenizer import packaged_tokenizer
    from pixtral.train.data import load_dataset

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    Image.new("RGB", (190, 40), "white").save(src / "images" / "a.png")
    row = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "images/a.png"}},
                    {"type": "text", "text": "What colour?"},
                ],
            },
            {"role": "assistant", "content": "white"},
        ]
    }
    (src / "train.jsonl").write_text(json.dumps(row) + "\n")
    out = resize_jsonl(src / "train.jsonl", tmp_path / "fixed", side=128)
    new = json.loads(out.read_text())
    with Image.open(out.parent / new["messages"][0]["content"][0]["image_url"]["url"]) as im:
        assert im.size == (128, 128)
    tok = packaged_tokenizer()
    data = load_dataset(str(out), tok, 512, "truncate", name="data")
    ids = data.samples[0].token_ids
    assert ids.count(10) == 64 and ids.count(12) == 7 and ids.count(13) == 1  # 8 x 8 [IMG] block
