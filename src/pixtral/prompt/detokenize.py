"""Token ids -> text, one token at a time, never emitting part of a UTF-8 character.

A tekken token is a byte sequence, and a multi-byte character (an emoji, most CJK) is often split over
several tokens: "🎉" is four single-byte tokens. The bytes are fed to an incremental UTF-8 decoder that
holds back an incomplete character until its last byte arrives.

The output matches `tokenizer.decode(ids)` exactly, invalid bytes included: tekken decodes each run of
text tokens between control tokens on its own with errors="replace", so a control token (id < 1000, e.g.
EOS) closes the current run here too, and produces no text itself.

SentencePiece tokenizers (Pixtral-Large's tokenizer.model.v7m1) are streamed the same way from their pieces:
"▁" is a space, `<0xNN>` pieces are raw bytes, control tokens produce nothing (but, as in SentencePiece's
own decode, end a run of bytes: an incomplete character before one becomes U+FFFD), and the space
SentencePiece puts before the first word is dropped.
"""

from __future__ import annotations

import codecs
import re

from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from mistral_common.tokens.tokenizers.tekken import SpecialTokenPolicy, Tekkenizer

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class StreamingDetokenizer:
    """`push(token_id)` returns the text completed by that token ('' while a character is incomplete);
    `flush()` returns what is left at the end of the stream."""

    def __init__(self, tokenizer: MistralTokenizer) -> None:
        inner = tokenizer.instruct_tokenizer.tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._n_words = inner.n_words
        if isinstance(inner, Tekkenizer):
            self._tekken: Tekkenizer | None = inner
            self._n_control = inner.num_special_tokens
            return
        if type(inner).__name__ != "SentencePieceTokenizer":
            raise TypeError(
                f"StreamingDetokenizer needs a tekken or SentencePiece tokenizer, got {type(inner).__name__}"
            )
        self._tekken = None
        self._sp = inner
        self._sp_control = inner.special_ids
        self._sp_start = True  # the next text piece is the first: its leading space is SentencePiece's prefix

    def push(self, token_id: int) -> str:
        token_id = int(token_id)
        if not 0 <= token_id < self._n_words:
            raise ValueError(f"token id {token_id} is outside the vocabulary (0..{self._n_words - 1})")
        if self._tekken is None:
            return self._push_sentencepiece(token_id)
        if token_id < self._n_control:
            return self.flush()
        return self._utf8.decode(self._tekken.id_to_byte_piece(token_id, SpecialTokenPolicy.IGNORE))

    def _push_sentencepiece(self, token_id: int) -> str:
        if token_id in self._sp_control:  # ends a run of byte pieces, as in SentencePiece's decode
            return self.flush()
        if token_id == self._sp.unk_id:  # SentencePiece's unknown surface, never stripped
            self._sp_start = False
            return self._utf8.decode(" \u2047 ".encode("utf-8"))
        piece = self._sp.id_to_piece(token_id)
        byte = _BYTE_PIECE.match(piece)
        data = bytes([int(byte.group(1), 16)]) if byte else piece.replace("\u2581", " ").encode("utf-8")
        if self._sp_start and data:
            self._sp_start = False
            if not byte and data.startswith(b" "):
                data = data[1:]
        return self._utf8.decode(data)

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
