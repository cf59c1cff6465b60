"""One 'tiny'-preset export (the real tekken vocabulary) shared by the tokenizer and llama.cpp tests:
exporting 131072 tokens and their merges costs several seconds, reading them back more."""

from __future__ import annotations

import pytest

from pixtral.checkpoint.loader import save_model
from pixtral.config import preset
from pixtral.model.init import init_random_weights_
from pixtral.model.pixtral import Pixtral


@pytest.fixture(scope="session")
def tiny_f32_export(tmp_path_factory):
    """(model, GGUFExport) of the 'tiny' preset with peaked logits (std 0.15, jittered norms), f32 + mmproj."""
    from pixtral.checkpoint.gguf_export import export_gguf

    folder = tmp_path_factory.mktemp("tiny-gguf") / "model"
    model = init_random_weights_(Pixtral(preset("tiny")), seed=0, std=0.15, norm_jitter=0.2).eval()
    save_model(model, folder, "native")
    return model, export_gguf(folder, folder.parent / "model.gguf", "f32")
