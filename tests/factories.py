"""Small random Pixtral configs, models and prompts shared by the tests."""

from __future__ import annotations

import torch

from pixtral.config import Llama4Scaling, PixtralConfig, TextConfig, VisionConfig, YarnConfig
from pixtral.model.init import init_random_weights_
from pixtral.model.pixtral import Pixtral

# head_dim 16 != dim / n_heads = 8: loaders that derive head_dim fail on this config, as on NeMo.
TEST_CONFIG = PixtralConfig(
    text=TextConfig(dim=64, n_layers=2, head_dim=16, hidden_dim=96, n_heads=8, n_kv_heads=2, vocab_size=1200),
    vision=VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=256
    ),
)


def random_model(config: PixtralConfig = TEST_CONFIG, seed: int = 0) -> Pixtral:
    """Weights large enough that logits are far from uniform (so parity and greedy checks can fail)."""
    return init_random_weights_(Pixtral(config), seed=seed, std=0.15, norm_jitter=0.2).eval()


def image_block(rows: int, cols: int, config: PixtralConfig = TEST_CONFIG) -> list[int]:
    """[IMG]*cols [IMG_BREAK] ... [IMG]*cols [IMG_END] for one image (docs/architecture.md, "Adapter and merge")."""
    v = config.vision
    ids: list[int] = []
    for r in range(rows):
        ids += [v.image_token_id] * cols + [v.image_break_token_id if r < rows - 1 else v.image_end_token_id]
    return ids


def prompt_with_images(grids: list[tuple[int, int]], seed: int = 0, config: PixtralConfig = TEST_CONFIG):
    """Token ids interleaving text and image blocks, and matching random pixel tensors (3, 16r, 16c)."""
    gen = torch.Generator().manual_seed(seed)
    text = lambda n: torch.randint(1000, config.text.vocab_size, (n,), generator=gen).tolist()  # noqa: E731
    ids = [config.bos_id, 3]
    images = []
    for r, c in grids:
        ids += text(3) + image_block(r, c, config)
        images.append(torch.randn(3, 16 * r, 16 * c, generator=gen))
    ids += text(4) + [4]
    return torch.tensor([ids]), images


# ---- the family's shapes (issue #18), tiny -----------------------------------------------------------

# Mistral Small 3.1 / 3.2 / Magistral: patch 14, projector norm + 2x2 patch merger, adapter without bias.
MISTRAL3_CONFIG = PixtralConfig(
    text=TextConfig(
        dim=64,
        n_layers=2,
        head_dim=16,
        hidden_dim=96,
        n_heads=8,
        n_kv_heads=2,
        vocab_size=1200,
        norm_eps=1e-5,
    ),
    vision=VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=280,
        patch_size=14,
        adapter_bias=False,
        add_pre_mm_projector_layer_norm=True,
        mm_projector_id="patch_merge",
        spatial_merge_size=2,
    ),
)

# Ministral 3 / Devstral Small 2: the same vision side; YaRN + llama-4 scaling with an original length of 24
# (so prompts of a few dozen tokens cross several scaling steps), tied embeddings, a different norm eps
# (the projector norm must take the text eps).
MINISTRAL3_CONFIG = PixtralConfig(
    text=TextConfig(
        dim=64,
        n_layers=2,
        head_dim=32,
        hidden_dim=96,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=1200,
        norm_eps=1e-6,
        rope_theta=100.0,
        max_seq_len=384,
        tied_embeddings=True,
        yarn=YarnConfig(factor=16.0, original_max_position_embeddings=24),
        llama_4_scaling=Llama4Scaling(original_max_position_embeddings=24, beta=0.1),
    ),
    vision=MISTRAL3_CONFIG.vision,
)


def family_prompt(token_grids: list[tuple[int, int]], config: PixtralConfig, seed: int = 0):
    """Like prompt_with_images for any patch size and merge: token_grids are [IMG] rows x columns; the
    images are (3, rows * unit, cols * unit) with unit = patch_size * spatial_merge_size."""
    gen = torch.Generator().manual_seed(seed)
    unit = config.vision.tokens_per_side_unit
    text = lambda n: torch.randint(1000, config.text.vocab_size, (n,), generator=gen).tolist()  # noqa: E731
    ids = [config.bos_id, 3]
    images = []
    for r, c in token_grids:
        ids += text(3) + image_block(r, c, config)
        images.append(torch.randn(3, unit * r, unit * c, generator=gen))
    ids += text(4) + [4]
    return torch.tensor([ids]), images
