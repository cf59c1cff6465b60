"""Token ids -> text, one token at a time, never emitting part of a UTF-8 character.

A tekken token is a byte sequence, and a multi-byte character (an emoji, most CJK) is often split over
several tokens: "🎉" is four single-byte tokens. The bytes are fed to an incremental UTF-8 decoder that
holds back an incomplete character until its last byte arrives.

The output matches `tokenizer.decode(ids)` exactly, invalid bytes included: tekken decodes each run of
text tokens between control tokens on its own with errors="replace", so a control token (id < 1000, e.g.
EOS) closes the current run here too, and produces no text itself.
"""

from __future__ import annotations

import codecs

from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from mistral_common.tokens.tokenizers.tekken import SpecialTokenPolicy, Tekkenizer


class StreamingDetokenizer:
    """`push(token_id)` returns the text completed by that token ('' while a character is incomplete);
    `flush()` returns what is left at the end of the stream."""

    def __init__(self, tokenizer: MistralTokenizer) -> None:
        tekken = tokenizer.instruct_tokenizer.tokenizer
        if not isinstance(tekken, Tekkenizer):
            raise TypeError(f"StreamingDetokenizer needs a tekken tokenizer, got {type(tekken).__name__}")
        self._tekken = tekken
        self._n_control = tekken.num_special_tokens
        self._n_words = tekken.n_words
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        token_id = int(token_id)
        if not 0 <= token_id < self._n_words:
            raise ValueError(f"token id {token_id} is outside the vocabulary (0..{self._n_words - 1})")
        if token_id < self._n_control:
            return self.flush()
        return self._utf8.decode(self._tekken.id_to_byte_piece(token_id, SpecialTokenPolicy.IGNORE))

    def flush(self) -> str:
        """End the current run: an incomplete character left over becomes U+FFFD, as in decode()."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text


def token_bytes(tokenizer: MistralTokenizer, token_id: int) -> bytes:
    """One token's bytes, as logprobs report them: a text token's raw bytes (possibly part of a UTF-8
    character), a control token's name ("</s>", "[TOOL_CALLS]")."""
    tekken = tokenizer.instruct_tokenizer.tokenizer
    if not isinstance(tekken, Tekkenizer):
        raise TypeError(f"token_bytes needs a tekken tokenizer, got {type(tekken).__name__}")
    return tekken.id_to_byte_piece(int(token_id), SpecialTokenPolicy.KEEP)
