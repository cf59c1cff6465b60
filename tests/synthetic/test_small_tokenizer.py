"""The small tekken tokenizer: 1000 control tokens + the first N BPE ranks of the real one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixtral.errors import ConfigError
from pixtral.prompt.tokenizer import load_tokenizer, packaged_tokenizer
from pixtral.synthetic.small_tokenizer import N_CONTROL, main, write_small_tokenizer

N = 1500


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("small_model")
    write_small_tokenizer(folder, N)
    return folder


@pytest.fixture(scope="module")
def small(small_dir):
    return load_tokenizer(small_dir)  # the project's loader, i.e. MistralTokenizer.from_file on tekken.json


@pytest.fixture(scope="module")
def inner(small):
    return small.instruct_tokenizer.tokenizer


@pytest.fixture(scope="module")
def real():
    return packaged_tokenizer().instruct_tokenizer.tokenizer


def test_exactly_1000_plus_n_words(inner, small_dir):
    assert inner.n_words == N_CONTROL + N
    assert inner.num_special_tokens == N_CONTROL
    assert len(inner.vocab()) == N_CONTROL + N
    config = json.loads((small_dir / "tekken.json").read_text())["config"]
    assert (
        config["default_vocab_size"] == N_CONTROL + N
        and len(json.loads((small_dir / "tekken.json").read_text())["vocab"]) == N
    )


def test_control_tokens_match_the_real_tokenizer(inner, real, small):
    for i in range(N_CONTROL):
        assert inner.id_to_piece(i) == real.id_to_piece(i)
    for name in ("<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"):
        assert inner.get_special_token(name) == real.get_special_token(name)
    assert (inner.bos_id, inner.eos_id) == (1, 2)
    assert small.instruct_tokenizer.image_encoder is not None  # the image section came along


def test_bytes_and_common_words_match(inner, real):
    for b in range(256):
        assert inner.id_to_byte_piece(N_CONTROL + b) == bytes([b]) == real.id_to_byte_piece(N_CONTROL + b)
    for text in ("a", "the", " the", "Hello", "What is the value?", "0123456789", "\n\n", "é"):
        ids = real.encode(text, False, False)
        if max(ids) < N_CONTROL + N:
            assert inner.encode(text, False, False) == ids, text


def test_chat_template_with_an_image_matches(small):
    from PIL import Image

    from pixtral.prompt.chat import encode_chat

    image = Image.new("RGB", (40, 20), (200, 10, 10))
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "a b"}]}
    ]
    got = encode_chat(messages, small)
    want = encode_chat(messages, packaged_tokenizer())
    assert got.token_ids == want.token_ids
    assert got.images[0].shape == want.images[0].shape == (3, 32, 48)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=60))
def test_round_trips_any_text(inner, real, text):
    ids = inner.encode(text, True, True)
    assert ids[0] == 1 and ids[-1] == 2
    assert all(0 <= i < N_CONTROL + N for i in ids)
    assert inner.decode(ids) == text
    real_ids = real.encode(text, False, False)
    if all(i < N_CONTROL + N for i in real_ids):  # text whose BPE ranks are all < N: the real ids
        assert inner.encode(text, False, False) == real_ids


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=40))
def test_ascii_agrees_with_the_real_ids_when_in_range(inner, real, text):
    real_ids = real.encode(text, False, False)
    if all(i < N_CONTROL + N for i in real_ids):
        assert inner.encode(text, False, False) == real_ids


def test_smallest_vocabulary_is_bytes_only(tmp_path):
    tok = load_tokenizer(write_small_tokenizer(tmp_path, 256).parent).instruct_tokenizer.tokenizer
    assert tok.n_words == N_CONTROL + 256
    text = "naïve — 日本語 🙂"
    ids = tok.encode(text, False, False)
    assert len(ids) == len(text.encode()) and tok.decode(ids) == text


def test_bad_sizes_and_names(tmp_path, capsys):
    with pytest.raises(ConfigError, match="n_words"):
        write_small_tokenizer(tmp_path, 100)
    with pytest.raises(ConfigError, match="tekken"):
        write_small_tokenizer(tmp_path / "vocab.json", 1000)
    assert main(["2000", str(tmp_path / "m")]) == 0
    assert "3000 ids" in capsys.readouterr().out
    assert load_tokenizer(tmp_path / "m").instruct_tokenizer.tokenizer.n_words == 3000
