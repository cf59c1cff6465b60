"""StreamingDetokenizer: the streamed text equals tokenizer.decode and never splits a character."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixtral.prompt.detokenize import StreamingDetokenizer

EOS = 2
N_CONTROL = 1000
N_WORDS = 131072

# Emoji, CJK, accents, RTL, math letters, combining marks and plain ASCII, in any mix.
TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(list("🎉🦀👩‍💻🇫🇷日本語中文한국어éüñ𝔘\u0301مرحبا \n\t")),
    ),
    max_size=40,
)
HYPOTHESIS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def stream(tokenizer, ids: list[int]) -> list[str]:
    detokenizer = StreamingDetokenizer(tokenizer)
    return [detokenizer.push(token_id) for token_id in ids] + [detokenizer.flush()]


def encode_text(tokenizer, text: str) -> list[int]:
    return tokenizer.instruct_tokenizer.tokenizer.encode(text, bos=False, eos=False)


@HYPOTHESIS
@given(text=TEXT)
def test_streamed_text_equals_decode_and_never_splits_a_character(tokenizer, text):
    ids = encode_text(tokenizer, text)
    pieces = stream(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids) == text
    for piece in pieces:
        assert "\ufffd" not in piece  # a split character would show up as a replacement character
        piece.encode("utf-8")  # a str made of whole characters (no lone surrogates)


@HYPOTHESIS
@given(
    ids=st.lists(
        st.one_of(
            st.integers(N_CONTROL, N_CONTROL + 255),  # single bytes: invalid UTF-8 is likely
            st.integers(N_CONTROL, N_WORDS - 1),
            st.sampled_from([EOS, 1, 3, 4, 10, 12, 13]),
        ),
        max_size=30,
    )
)
def test_any_id_sequence_streams_to_exactly_decode(tokenizer, ids):
    assert "".join(stream(tokenizer, ids)) == tokenizer.decode(ids)


def test_pieces_that_would_split_a_character_are_empty(tokenizer):
    tekken = tokenizer.instruct_tokenizer.tokenizer
    for text in ["🎉", "🦀", "𝔘"]:
        ids = encode_text(tokenizer, "a" + text + "b")
        byte_pieces = [tekken.id_to_byte_piece(i) for i in ids]
        assert len(ids) > 3, f"{text!r} is not split over several tokens; pick another character"
        assert b"".join(byte_pieces) == ("a" + text + "b").encode()
        pieces = stream(tokenizer, ids)
        assert pieces[0] == "a"
        assert pieces[1:-3] == [""] * (len(ids) - 3)  # the character's leading bytes produce nothing
        assert pieces[-3:] == [text, "b", ""]


def test_control_tokens_produce_no_text(tokenizer):
    hello = encode_text(tokenizer, "Hello")
    assert stream(tokenizer, [1, 3, *hello, 4, EOS]) == ["", "", *["Hello"], "", "", ""]


def test_control_token_ends_an_incomplete_character_like_decode(tokenizer):
    party = encode_text(tokenizer, "🎉")
    ids = [*party[:2], EOS, *party[2:]]
    pieces = stream(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids)
    assert pieces[2] == "\ufffd"  # the two dangling bytes, as decode renders them


def test_flush_resets_and_detokenizer_is_reusable(tokenizer):
    detokenizer = StreamingDetokenizer(tokenizer)
    party = encode_text(tokenizer, "🎉")
    assert [detokenizer.push(i) for i in party[:3]] == ["", "", ""]
    assert detokenizer.flush() == "\ufffd"
    assert "".join(detokenizer.push(i) for i in party) == "🎉"
    assert detokenizer.flush() == ""


@pytest.mark.parametrize("token_id", [-1, N_WORDS])
def test_ids_outside_the_vocabulary_are_refused(tokenizer, token_id):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        StreamingDetokenizer(tokenizer).push(token_id)
