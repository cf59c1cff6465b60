"""load_tokenizer: the packaged Pixtral tokenizer, a model folder's own tekken.json, clear errors."""

from __future__ import annotations

import json
import shutil
from importlib.resources import files

import pytest

from pixtral.errors import ConfigError
from pixtral.prompt.tokenizer import load_tokenizer, packaged_tokenizer


def packaged_file():
    return files("mistral_common") / "data" / "tekken_240911.json"


def test_packaged_tokenizer_is_pixtrals_and_cached(tokenizer):
    assert load_tokenizer(None) is tokenizer is packaged_tokenizer()
    tekken = tokenizer.instruct_tokenizer.tokenizer
    assert tekken.file_path.name == "tekken_240911.json"
    assert (tekken.n_words, tekken.num_special_tokens) == (131072, 1000)
    image = tokenizer.instruct_tokenizer.image_encoder.image_config
    assert (image.image_patch_size, image.max_image_size) == (16, 1024)


def test_control_token_ids_are_the_specs(tokenizer):
    tekken = tokenizer.instruct_tokenizer.tokenizer
    names = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"]
    assert [tekken.get_special_token(name) for name in names] == [0, 1, 2, 3, 4, 10, 12, 13]
    assert tekken.encode("Hello", bos=False, eos=False) == [22177]
    assert tekken.encode("[INST]", bos=False, eos=False)[0] >= 1000  # text, never a control token


def test_folder_without_tekken_json_uses_the_packaged_one(tokenizer, tmp_path):
    assert load_tokenizer(tmp_path) is tokenizer
    assert load_tokenizer(str(tmp_path)) is tokenizer


def test_folder_tekken_json_wins(tmp_path):
    config = json.loads(packaged_file().read_text())
    config["image"]["max_image_size"] = 512  # a visible difference from the packaged file
    (tmp_path / "tekken.json").write_text(json.dumps(config))
    loaded = load_tokenizer(tmp_path)
    assert loaded.instruct_tokenizer.tokenizer.file_path == tmp_path / "tekken.json"
    assert loaded.instruct_tokenizer.image_encoder.image_config.max_image_size == 512


def test_identical_copy_encodes_identically(tokenizer, tmp_path):
    with packaged_file().open("rb") as source, open(tmp_path / "tekken.json", "wb") as target:
        shutil.copyfileobj(source, target)
    copy = load_tokenizer(tmp_path)
    assert copy is not tokenizer
    text = "Pixtral sees 🎉 and 日本語."
    assert copy.instruct_tokenizer.tokenizer.encode(
        text, False, False
    ) == tokenizer.instruct_tokenizer.tokenizer.encode(text, False, False)


@pytest.mark.parametrize(
    "content",
    ['{"config": {"pattern": ', "{}", '{"config": {}, "vocab": []}', "\x00\x01 not json"],
    ids=["truncated", "empty-object", "missing-fields", "binary"],
)
def test_corrupt_tekken_json_names_the_file(tmp_path, content):
    (tmp_path / "tekken.json").write_text(content)
    with pytest.raises(ConfigError, match=r"tokenizer file .*tekken\.json cannot be loaded"):
        load_tokenizer(tmp_path)


def test_missing_model_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_tokenizer(tmp_path / "nowhere")
