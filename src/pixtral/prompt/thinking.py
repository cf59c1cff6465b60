"""Magistral's reasoning: the model writes `[THINK] ... [/THINK]` before its answer (tokenizer v13, where both
are control tokens). The engine routes the text between them to `reasoning` (the API's `reasoning_content`,
vLLM's field) and the rest to the answer. Tokenizers without these tokens have no reasoning."""

from __future__ import annotations

from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

BEGIN_THINK, END_THINK = "[THINK]", "[/THINK]"


def think_token_ids(tokenizer: MistralTokenizer) -> tuple[int, int] | None:
    """([THINK], [/THINK]) ids of a tokenizer that has both as special tokens, else None."""
    inner = tokenizer.instruct_tokenizer.tokenizer
    try:
        begin, end = inner.get_special_token(BEGIN_THINK), inner.get_special_token(END_THINK)
    except (ValueError, KeyError, AttributeError, AssertionError):
        return None
    return (begin, end) if begin != end else None
