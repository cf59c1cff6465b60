"""The family's tokenizers come from the model folder: tokens and pixels identical to mistral-common's for
tekken files with each model's image settings (v7 with merge 2, v13 with [THINK]) and for Pixtral-Large's
SentencePiece tokenizer.model.v7m1; image settings cross-checked against the model config; [IMG] /
[IMG_BREAK] / [IMG_END] ids taken from the tokenizer."""

from __future__ import annotations

import shutil
from dataclasses import replace
from importlib.resources import as_file, files

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mistral_common.protocol.instruct.chunk import ImageChunk, TextChunk
from mistral_common.protocol.instruct.messages import SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from pixtral.config import PixtralConfig, with_text
from pixtral.errors import ConfigError
from pixtral.prompt.chat import encode_chat
from pixtral.prompt.detokenize import StreamingDetokenizer
from pixtral.prompt.tokenizer import load_tokenizer, tokenizer_checked_config
from tests.factories import MISTRAL3_CONFIG, TEST_CONFIG
from tests.prompt.family_tekken import SETTINGS, VOCAB, write_family_tekken
from tests.prompt.prompt_helpers import noise_image

SIZES = [(150, 100), (37, 61), (300, 29)]  # (width, height): odd sizes, one thin


def both_encodings(tokenizer: MistralTokenizer, images):
    """Ours (OpenAI-shaped messages through encode_chat) and mistral-common's own request encoding."""
    ours = encode_chat(
        [
            {"role": "system", "content": "Answer briefly."},
            {
                "role": "user",
                "content": [{"type": "image", "image": im} for im in images]
                + [{"type": "text", "text": "Which?"}],
            },
        ],
        tokenizer,
    )
    request = ChatCompletionRequest(
        messages=[
            SystemMessage(content="Answer briefly."),
            UserMessage(content=[ImageChunk(image=im) for im in images] + [TextChunk(text="Which?")]),
        ]
    )
    reference = tokenizer.encode_chat_completion(request)
    return ours, reference


@pytest.mark.parametrize("member", list(SETTINGS))
def test_folder_tekken_tokens_and_pixels_equal_mistral_common(member, tmp_path):
    version, patch, max_size, merge = SETTINGS[member]
    path = write_family_tekken(tmp_path, version, patch, max_size, merge)
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.instruct_tokenizer.tokenizer.file_path == path
    assert tokenizer.instruct_tokenizer.tokenizer.version.value == version
    images = [noise_image(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]
    ours, reference = both_encodings(MistralTokenizer.from_file(str(path)), images)
    assert ours.token_ids == reference.tokens
    assert len(ours.images) == len(reference.images) == len(images)
    unit = patch * merge
    n_img = 0
    for got, expected in zip(ours.images, reference.images, strict=True):
        assert got.dtype == np.float32 and np.array_equal(got, expected)
        assert got.shape[1] % unit == 0 and got.shape[2] % unit == 0  # sides: multiples of patch x merge
        n_img += (got.shape[1] // unit) * (got.shape[2] // unit)  # one [IMG] per merged block
    assert ours.token_ids.count(10) == n_img


def test_magistral_v13_tokenizer_knows_think_tokens(tmp_path):
    write_family_tekken(tmp_path, *SETTINGS["magistral-small"])
    tekken = load_tokenizer(tmp_path).instruct_tokenizer.tokenizer
    assert (tekken.get_special_token("[THINK]"), tekken.get_special_token("[/THINK]")) == (34, 35)


def test_tokenizer_settings_are_checked_against_the_model(tmp_path):
    config = with_text(MISTRAL3_CONFIG, vocab_size=VOCAB)  # patch 14, merge 2, image_size 280
    write_family_tekken(tmp_path / "ok", "v7", 14, 280, 2)
    checked = tokenizer_checked_config(load_tokenizer(tmp_path / "ok"), config, "model")
    assert checked == config  # same ids (10, 12, 13)
    for name, (patch, max_size, merge), message in [
        ("patch", (16, 280, 2), "image_patch_size 16 vs the vision patch_size 14"),
        ("merge", (14, 280, 1), "spatial_merge_size 1 vs the model's 2"),
        ("size", (14, 1540, 2), "max_image_size 1540 px is larger than the vision image_size 280"),
    ]:
        write_family_tekken(tmp_path / name, "v7", patch, max_size, merge)
        with pytest.raises(ConfigError, match=message):
            tokenizer_checked_config(load_tokenizer(tmp_path / name), config, "model")
    # the 12B's shape with a merging tokenizer is refused the same way
    with pytest.raises(ConfigError, match="no patch merger"):
        write_family_tekken(tmp_path / "m12", "v7", 16, 256, 2)
        tokenizer_checked_config(load_tokenizer(tmp_path / "m12"), TEST_CONFIG, "model")


def test_engine_uses_the_folder_tokenizer_with_a_merging_model(tmp_path):
    """End to end: a tiny Mistral-Small-shaped model with its v7 tekken: the [IMG] grid the tokenizer
    writes is exactly the number of features the merger produces."""
    from pixtral.checkpoint.loader import save_model
    from pixtral.engine.engine import Engine
    from pixtral.engine.sampling import SamplingParams
    from tests.factories import random_model

    config = with_text(MISTRAL3_CONFIG, vocab_size=VOCAB)
    save_model(random_model(config), tmp_path, "native")
    write_family_tekken(tmp_path, "v7", 14, 280, 2)
    engine = Engine.load(tmp_path)
    try:
        messages = [
            {
                "role": "user",
                "content": [{"type": "image", "image": noise_image(61, 90)}, {"type": "text", "text": "?"}],
            }
        ]
        result = engine.generate(messages, SamplingParams(max_tokens=3))
        assert len(result.token_ids) == 3
    finally:
        engine.close()


V7M1 = "mistral_instruct_tokenizer_241114.model.v7m1"  # Pixtral-Large-Instruct-2411's tokenizer


@pytest.fixture
def pixtral_large_folder(tmp_path):
    pytest.importorskip("sentencepiece")
    with (
        (files("mistral_common") / "data" / V7M1).open("rb") as src,
        open(tmp_path / "tokenizer.model.v7m1", "wb") as dst,
    ):
        shutil.copyfileobj(src, dst)
    return tmp_path


def test_pixtral_large_sentencepiece_tokens_pixels_and_ids(pixtral_large_folder):
    tokenizer = load_tokenizer(pixtral_large_folder)
    inner = tokenizer.instruct_tokenizer.tokenizer
    assert type(inner).__name__ == "SentencePieceTokenizer" and inner.n_words == 32768
    images = [noise_image(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]
    reference_tok = MistralTokenizer.from_file(str(pixtral_large_folder / "tokenizer.model.v7m1"))
    ours, reference = both_encodings(reference_tok, images)
    ours_folder, _ = both_encodings(tokenizer, images)
    assert ours.token_ids == ours_folder.token_ids == reference.tokens
    assert all(np.array_equal(a, b) for a, b in zip(ours.images, reference.images, strict=True))
    # Pixtral-Large's ids: [IMG_BREAK] 14, [IMG_END] 15, taken from the tokenizer, not the defaults 12 / 13
    config = replace(PixtralConfig(), text=replace(PixtralConfig().text, vocab_size=32768))
    checked = tokenizer_checked_config(tokenizer, config, "pixtral-large")
    v = checked.vision
    assert (v.image_token_id, v.image_break_token_id, v.image_end_token_id) == (10, 14, 15)
    assert 14 in ours.token_ids and 15 in ours.token_ids and 12 not in ours.token_ids


def test_several_sentencepiece_files_are_ambiguous(pixtral_large_folder):
    shutil.copyfile(
        pixtral_large_folder / "tokenizer.model.v7m1", pixtral_large_folder / "tokenizer.model.v3"
    )
    with pytest.raises(ConfigError, match="several tokenizer files"):
        load_tokenizer(pixtral_large_folder)


# ---- the SentencePiece detokenizer (Pixtral-Large) --------------------------------------------------------


@pytest.fixture(scope="module")
def v7m1():
    pytest.importorskip("sentencepiece")
    with as_file(files("mistral_common") / "data" / V7M1) as path:
        return MistralTokenizer.from_file(str(path))


def sp_stream(tokenizer, ids: list[int]) -> list[str]:
    detokenizer = StreamingDetokenizer(tokenizer)
    return [detokenizer.push(i) for i in ids] + [detokenizer.flush()]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(
        alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from(list("🎉日本é \n\t"))), max_size=30
    )
)
def test_sentencepiece_stream_equals_decode_and_never_splits_a_character(v7m1, text):
    inner = v7m1.instruct_tokenizer.tokenizer
    ids = inner.encode(text, bos=True, eos=True)
    pieces = sp_stream(v7m1, ids)
    assert "".join(pieces) == inner.decode(ids)
    assert all("\ufffd" not in p for p in pieces) or "\ufffd" in text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.one_of(st.integers(0, 32767), st.integers(0, 300)), max_size=25))
@example(ids=[965, 1, 899])  # <0xC2> <s> <0x80>: the control token splits the character (two U+FFFD)
def test_sentencepiece_any_ids_stream_to_exactly_decode(v7m1, ids):
    """Byte pieces (invalid UTF-8 likely), control tokens, <unk> and words in any order."""
    assert "".join(sp_stream(v7m1, ids)) == v7m1.instruct_tokenizer.tokenizer.decode(ids)


def test_engine_runs_pixtral_large_layout_with_its_sentencepiece_tokenizer(pixtral_large_folder):
    """A tiny Pixtral-Large-shaped model whose params.json has the default ids: the engine takes 14 / 15
    from tokenizer.model.v7m1, encodes an image chat, and streams text through the SentencePiece path."""
    from pixtral.checkpoint.loader import save_model
    from pixtral.engine.engine import Engine
    from pixtral.engine.sampling import SamplingParams
    from tests.factories import random_model

    config = with_text(
        replace(TEST_CONFIG, vision=replace(TEST_CONFIG.vision, adapter_bias=False, image_size=1024)),
        vocab_size=32768,
    )
    save_model(random_model(config), pixtral_large_folder, "native")
    engine = Engine.load(pixtral_large_folder)
    try:
        v = engine.model.config.vision
        assert (v.image_break_token_id, v.image_end_token_id) == (14, 15)
        messages = [
            {
                "role": "user",
                "content": [{"type": "image", "image": noise_image(40, 33)}, {"type": "text", "text": "?"}],
            }
        ]
        result = engine.generate(messages, SamplingParams(max_tokens=5))
        assert len(result.token_ids) == 5
        assert result.text == engine.tokenizer.instruct_tokenizer.tokenizer.decode(result.token_ids)
    finally:
        engine.close()


def test_a_32768_id_model_without_its_own_tokenizer_gets_pixtral_large_s(tmp_path):
    """mistral-community/Pixtral-Large-Instruct-2411 (HF format) has only an HF tokenizer.json."""
    pytest.importorskip("sentencepiece")
    config = with_text(TEST_CONFIG, vocab_size=32768)
    inner = load_tokenizer(tmp_path, config).instruct_tokenizer.tokenizer
    assert inner.n_words == 32768 and type(inner).__name__ == "SentencePieceTokenizer"
    assert load_tokenizer(tmp_path, TEST_CONFIG).instruct_tokenizer.tokenizer.n_words == 131072
