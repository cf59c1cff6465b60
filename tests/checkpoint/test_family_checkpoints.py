"""The family's checkpoints: params.json / config.json fields as published, names in native and both HF
spellings, conversion both ways bit-exact (a tied output matrix stored in neither), clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from pixtral.checkpoint.formats import HF_CONFIG, HF_WEIGHTS, NATIVE_PARAMS, NATIVE_WEIGHTS
from pixtral.checkpoint.hf_names import hf_to_native_name, native_to_hf_name
from pixtral.checkpoint.loader import convert, load_model, save_model
from pixtral.config import Llama4Scaling, PixtralConfig, YarnConfig
from pixtral.errors import ConfigError
from tests.factories import MINISTRAL3_CONFIG, MISTRAL3_CONFIG, family_prompt, random_model

# The vision_encoder of Mistral-Small-3.1-24B-Instruct-2503's params.json (as transformers' conversion tests
# and vLLM read it), and Ministral 3's decoder fields.
MISTRAL_SMALL_VISION = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 1540,
    "intermediate_size": 4096,
    "num_channels": 3,
    "max_image_size": 1540,
    "rope_theta": 10000.0,
    "mm_projector_id": "patch_merge",
    "add_pre_mm_projector_layer_norm": True,
    "adapter_bias": False,
    "spatial_merge_size": 2,
    "image_token_id": 10,
    "image_break_token_id": 12,
    "image_end_token_id": 13,
}
MISTRAL_SMALL_PARAMS = {
    "dim": 5120,
    "n_layers": 40,
    "head_dim": 128,
    "hidden_dim": 32768,
    "n_heads": 32,
    "n_kv_heads": 8,
    "rope_theta": 1000000000.0,
    "norm_eps": 1e-05,
    "vocab_size": 131072,
    "vision_encoder": MISTRAL_SMALL_VISION,
}
MINISTRAL3_PARAMS = {
    "dim": 3072,
    "n_layers": 26,
    "head_dim": 128,
    "hidden_dim": 9216,
    "n_heads": 32,
    "n_kv_heads": 8,
    "rope_theta": 1000000.0,
    "norm_eps": 1e-05,
    "vocab_size": 131072,
    "max_position_embeddings": 262144,
    "tied_embeddings": True,
    "yarn": {
        "factor": 16.0,
        "original_max_position_embeddings": 16384,
        "beta": 32.0,
        "alpha": 1.0,
        "apply_scale": False,
    },
    "llama_4_scaling": {"original_max_position_embeddings": 16384, "beta": 0.1},
    "vision_encoder": MISTRAL_SMALL_VISION,
}


def test_mistral_small_params_json():
    cfg = PixtralConfig.from_params_json(MISTRAL_SMALL_PARAMS)
    v = cfg.vision
    assert (v.has_patch_merger, v.add_pre_mm_projector_layer_norm, v.spatial_merge_size) == (True, True, 2)
    assert not v.adapter_bias and v.tokens_per_side_unit == 28 and v.patch_size == 14
    assert cfg.text.yarn is None and not cfg.text.tied_embeddings
    assert PixtralConfig.from_params_json(cfg.to_params_json()) == cfg


def test_ministral3_params_json():
    cfg = PixtralConfig.from_params_json(MINISTRAL3_PARAMS)
    t = cfg.text
    assert t.tied_embeddings and t.max_seq_len == 262144
    assert t.yarn == YarnConfig(
        factor=16.0, original_max_position_embeddings=16384, beta_fast=32.0, beta_slow=1.0
    )
    assert t.llama_4_scaling == Llama4Scaling(16384, 0.1)
    assert PixtralConfig.from_params_json(cfg.to_params_json()) == cfg
    # and transformers reads our config.json for it as the same Ministral3 shape
    transformers = pytest.importorskip("transformers")
    hf = transformers.Mistral3Config.from_dict(cfg.to_hf_config())
    assert hf.tie_word_embeddings and hf.text_config.model_type == "ministral3"
    assert hf.text_config.rope_parameters["llama_4_scaling_beta"] == 0.1
    assert PixtralConfig.from_hf_config(hf.to_dict()) == cfg


def test_pixtral_12b_configs_are_unchanged():
    """The 12B's files keep exactly their keys: the family's fields are only written when used."""
    cfg = PixtralConfig()
    assert "spatial_merge_size" not in cfg.to_params_json()["vision_encoder"]
    assert not {"yarn", "llama_4_scaling", "tied_embeddings"} & cfg.to_params_json().keys()
    assert cfg.to_hf_config()["model_type"] == "llava"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mm_projector_id": "conv"}, "mm_projector_id='conv' is not supported"),
        ({"mm_projector_id": None}, "spatial_merge_size=2 needs mm_projector_id 'patch_merge'"),
        ({"image_size": 1526}, "multiple of patch_size * spatial_merge_size (28)"),
    ],
)
def test_bad_family_fields_name_the_field(change, message):
    params = {**MISTRAL_SMALL_PARAMS, "vision_encoder": {**MISTRAL_SMALL_VISION, **change}}
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")
    ):
        PixtralConfig.from_params_json(params, "params.json")


def test_projector_names_in_native_and_both_hf_spellings():
    for native, legacy in [
        ("pre_mm_projector_norm.weight", "multi_modal_projector.norm.weight"),
        ("patch_merger.merging_layer.weight", "multi_modal_projector.patch_merger.merging_layer.weight"),
    ]:
        assert native_to_hf_name(native) == legacy
        assert hf_to_native_name(legacy) == native
        assert hf_to_native_name("model." + legacy) == native


@pytest.mark.parametrize("config", [MISTRAL3_CONFIG, MINISTRAL3_CONFIG], ids=["mistral3", "ministral3"])
def test_native_to_hf_to_native_is_bit_exact(config, tmp_path):
    save_model(random_model(config, seed=3).to(torch.bfloat16), tmp_path / "src", "native")
    convert(tmp_path / "src", tmp_path / "hf", "hf")
    convert(tmp_path / "hf", tmp_path / "back", "native")
    a, b = (
        load_file(str(tmp_path / "src" / NATIVE_WEIGHTS)),
        load_file(str(tmp_path / "back" / NATIVE_WEIGHTS)),
    )
    hf = load_file(str(tmp_path / "hf" / HF_WEIGHTS))
    assert a.keys() == b.keys() and len(hf) == len(a)
    assert {"pre_mm_projector_norm.weight", "patch_merger.merging_layer.weight"} <= a.keys()
    assert ("output.weight" in a) == (not config.text.tied_embeddings)
    assert not any("lm_head" in n for n in hf) or not config.text.tied_embeddings
    for name in a:
        assert torch.equal(a[name].view(torch.uint8), b[name].view(torch.uint8)), name
    assert json.loads((tmp_path / "src" / NATIVE_PARAMS).read_text()) == json.loads(
        (tmp_path / "back" / NATIVE_PARAMS).read_text()
    )
    assert json.loads((tmp_path / "hf" / HF_CONFIG).read_text())["model_type"] == "mistral3"


@torch.no_grad()
def test_tied_output_is_the_embedding_matrix_after_loading(tmp_path):
    save_model(random_model(MINISTRAL3_CONFIG, seed=4), tmp_path, "native")
    model, _ = load_model(tmp_path, dtype="bfloat16")
    assert model.output.weight is model.tok_embeddings.weight
    assert model.output.weight.dtype == torch.bfloat16


def test_image_sides_that_do_not_merge_are_refused():
    model = random_model(MISTRAL3_CONFIG)
    ids, images = family_prompt([(2, 2)], MISTRAL3_CONFIG)
    with pytest.raises(ValueError, match="cannot be merged in 2x2 blocks"):
        model.encode_images([images[0][:, :42, :]])  # 3 patches tall


@torch.no_grad()
def test_quantized_loading_of_a_tied_model_keeps_the_tie(tmp_path):
    from pixtral.engine.quantize import load_quantized

    save_model(random_model(MINISTRAL3_CONFIG, seed=6), tmp_path, "native")
    model, _, summary = load_quantized(tmp_path, "int8", dtype="float32")
    assert model.output.weight is model.tok_embeddings.weight
    assert len(summary.quantized) == 7 * MINISTRAL3_CONFIG.text.n_layers and "output" not in summary.quantized


@pytest.mark.parametrize("name", ["tiny-mistral3", "tiny-ministral3", "tiny-pixtral-large"])
def test_init_family_preset_writes_a_model_with_a_matching_tokenizer(name, tmp_path, capsys):
    """`pixtral init --preset` for each tiny family shape: the folder loads in the engine (its tokenizer's
    image settings match the config) and `info` names the family member."""
    from pixtral.cli import main as cli
    from pixtral.config import PRESETS
    from pixtral.engine.engine import Engine

    assert cli(["init", "--out", str(tmp_path / name), "--preset", name]) == 0
    capsys.readouterr()
    assert cli(["info", str(tmp_path / name), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"].startswith(
        {
            "tiny-mistral3": "Mistral Small",
            "tiny-ministral3": "Ministral 3",
            "tiny-pixtral-large": "Pixtral-Large",
        }[name]
    )
    engine = Engine.load(tmp_path / name)
    try:
        assert engine.model.config == PRESETS[name]  # ids included: the tokenizer agrees with the preset
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("name", "billions"),
    # the released totals (model cards / hub metadata): 24.0 B, 3.8 B, 8.9 B, 13.9 B (13.95), 12.7 B
    [
        ("mistral-small-3.1", 24.0),
        ("ministral-3-3b", 3.8),
        ("ministral-3-8b", 8.9),
        ("ministral-3-14b", 13.9),
        ("12b", 12.7),
    ],
)
def test_real_family_presets_have_the_released_sizes(name, billions):
    """Counted on a meta-device model (no memory); `init` streams these to disk like the 12B."""
    from pixtral.checkpoint.loader import expected_shapes
    from pixtral.config import PRESETS, STREAMED_PRESETS, family_member

    config = PRESETS[name]
    total = sum(int(torch.Size(s).numel()) for s in expected_shapes(config).values())
    assert total == config.num_parameters()["total"]
    assert round(total / 1e9, 1) == billions and name in STREAMED_PRESETS
    assert "other dims" not in family_member(config)


def test_hub_download_fetches_one_format_of_a_repo_with_both(monkeypatch, tmp_path):
    """Mistral Small 3.1's repo holds params.json + consolidated.safetensors and config.json + shards: the
    configs come first, then only the native weights."""
    import huggingface_hub

    from pixtral.checkpoint import hub

    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, local_files_only=False):
        calls.append(list(allow_patterns))
        (tmp_path / "params.json").write_text("{}")
        (tmp_path / "config.json").write_text("{}")
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert hub.download("mistralai/Mistral-Small-3.1-24B-Instruct-2503") == tmp_path
    first, second = calls
    assert not any("safetensors" in p and "index" not in p for p in first)
    assert "SYSTEM_PROMPT.txt" in first and "tokenizer.model.v*" in first
    assert "consolidated.safetensors" in second and not any(
        p.startswith("model") and "index" not in p for p in second
    )


@torch.no_grad()
def test_sharded_native_checkpoint_loads(tmp_path):
    """Pixtral-Large's native release is consolidated-XXXXX-of-YYYYY.safetensors shards."""
    from safetensors.torch import save_file

    save_model(random_model(MISTRAL3_CONFIG, seed=2), tmp_path / "one", "native")
    tensors = load_file(str(tmp_path / "one" / NATIVE_WEIGHTS))
    names = sorted(tensors)
    (tmp_path / "sharded").mkdir()
    (tmp_path / "sharded" / NATIVE_PARAMS).write_text((tmp_path / "one" / NATIVE_PARAMS).read_text())
    for i, part in enumerate((names[::2], names[1::2])):
        save_file(
            {n: tensors[n] for n in part},
            str(tmp_path / "sharded" / f"consolidated-{i + 1:05d}-of-00002.safetensors"),
        )
    a, _ = load_model(tmp_path / "one")
    b, ckpt = load_model(tmp_path / "sharded")
    assert ckpt.format == "native"
    ids, images = family_prompt([(2, 1)], MISTRAL3_CONFIG)
    assert torch.equal(a(ids, images), b(ids, images))
