"""The engine's TokenLogprobs -> OpenAI's logprobs shapes (chat `content` entries and the legacy completions
object). Token text is the token's bytes decoded with U+FFFD for an incomplete UTF-8 character, `bytes` the
raw bytes, as OpenAI reports them."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from pixtral.engine.sampling import TokenLogprobs
from pixtral.prompt.detokenize import token_bytes


class LogprobsFormatter:
    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    @functools.lru_cache(maxsize=65536)  # noqa: B019 - one formatter per server, bounded
    def piece(self, token_id: int) -> tuple[str, list[int]]:
        data = token_bytes(self._tokenizer, token_id)
        return data.decode("utf-8", errors="replace"), list(data)

    def entry(self, token_id: int, logprob: float) -> dict:
        text, data = self.piece(token_id)
        return {"token": text, "logprob": _finite(logprob), "bytes": data}

    def chat_content(self, entries: Sequence[TokenLogprobs]) -> list[dict]:
        """Chat completions: [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]."""
        return [
            {**self.entry(e.token_id, e.logprob), "top_logprobs": [self.entry(i, lp) for i, lp in e.top]}
            for e in entries
        ]

    def completion(self, entries: Sequence[TokenLogprobs], offset: int) -> dict:
        """Legacy completions: {tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}, the
        offsets counted in characters from `offset` (the text already returned)."""
        tokens, logprobs, tops, offsets = [], [], [], []
        for e in entries:
            text, _ = self.piece(e.token_id)
            tokens.append(text)
            logprobs.append(_finite(e.logprob))
            tops.append({self.piece(i)[0]: _finite(lp) for i, lp in e.top})
            offsets.append(offset)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}


def _finite(logprob: float) -> float:
    # JSON has no -inf: a token with probability 0 (masked out of the raw logits cannot happen, but a
    # float32 underflow can) is reported as OpenAI and vLLM do, with -9999.0.
    return max(logprob, -9999.0)
