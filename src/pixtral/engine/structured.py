"""Structured output: a grammar (JSON schema, any JSON object, a regex, a choice) that masks the logits of every
step, through xgrammar (a maintained constrained decoder; we write no grammar engine of our own).

- `StructuredOutput` is what a request asks for (in `SamplingParams.structured`); the engine compiles it in
  the caller's thread (`Grammars.compile`, cached per spec), so a slow compile never stalls the decode loop.
- `GrammarState` is one request's matcher and bitmask: `mask_(logits)` puts -inf on every token the grammar
  does not allow next, `accept(token)` advances it. The bitmask is filled on the CPU and applied on the
  logits' device.
JSON is generated compact (no free whitespace), so a model cannot spin on spaces. The tekken vocabulary goes
to xgrammar as raw bytes; control tokens are empty entries, which xgrammar never allows, except EOS, which
the grammar allows once the value is complete.
"""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from mistral_common.tokens.tokenizers.tekken import SpecialTokenPolicy

from pixtral.errors import InputError

KINDS = ("json_object", "json_schema", "regex", "choice")


@dataclass(frozen=True)
class StructuredOutput:
    """kind "json_object" (spec unused), "json_schema" (spec: the schema as JSON text), "regex" (spec: the
    pattern) or "choice" (spec: a JSON list of the allowed strings)."""

    kind: str
    spec: str = ""
    compiled: Any = field(default=None, compare=False, repr=False)  # set by the engine (Grammars.compile)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"structured output kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    @staticmethod
    def json_schema(schema: dict | str) -> StructuredOutput:
        return StructuredOutput("json_schema", schema if isinstance(schema, str) else json.dumps(schema))

    @staticmethod
    def choice(options: list[str]) -> StructuredOutput:
        return StructuredOutput("choice", json.dumps(list(options)))


def _xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError as e:  # an optional dependency: `pip install pixtral[structured]`
        raise InputError(
            "structured output needs the xgrammar package: pip install 'pixtral[structured]'"
        ) from e
    return xgrammar


class Grammars:
    """The compiler for one tokenizer (built on first use: about a second for 131k tokens) and a cache of
    compiled grammars."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_id: int) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._eos_id = eos_id
        self._compiler: Any = None
        self._lock = threading.Lock()

    def _get_compiler(self) -> Any:
        with self._lock:
            if self._compiler is None:
                xgr = _xgrammar()
                tekken = self._tokenizer.instruct_tokenizer.tokenizer
                n_control = tekken.num_special_tokens
                vocab = [
                    b""
                    if i < n_control or i >= tekken.n_words
                    else tekken.id_to_byte_piece(i, SpecialTokenPolicy.IGNORE)
                    for i in range(self._vocab_size)
                ]
                info = xgr.TokenizerInfo(
                    vocab, xgr.VocabType.RAW, vocab_size=self._vocab_size, stop_token_ids=[self._eos_id]
                )
                self._compiler = xgr.GrammarCompiler(info, max_threads=2)
            return self._compiler

    def compile(self, structured: StructuredOutput) -> StructuredOutput:
        """The same request with its grammar compiled; InputError for a schema or regex that does not
        compile."""
        if structured.compiled is not None:
            return structured
        compiled = self._compile(structured.kind, structured.spec)
        return StructuredOutput(structured.kind, structured.spec, compiled)

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one Grammars per engine, bounded
    def _compile(self, kind: str, spec: str) -> Any:
        compiler = self._get_compiler()
        try:
            if kind == "json_object":
                return compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
            if kind == "json_schema":
                return compiler.compile_json_schema(spec, any_whitespace=False, strict_mode=True)
            if kind == "regex":
                return compiler.compile_regex(spec)
            options = json.loads(spec)  # exactly one of the strings, as vLLM's guided_choice
            return compiler.compile_regex("|".join(f"({_regex_escape(o)})" for o in options))
        except InputError:
            raise
        except Exception as e:  # xgrammar raises RuntimeError / ValueError for an invalid schema or regex
            raise InputError(f"the {kind.replace('_', ' ')} cannot be compiled: {e}") from e


def _regex_escape(text: str) -> str:
    return "".join("\\" + c if c in r"\.^$|?*+()[]{}/" else c for c in text)


class GrammarState:
    """One request's position in its grammar."""

    def __init__(self, structured: StructuredOutput) -> None:
        if structured.compiled is None:
            raise ValueError("the structured output was not compiled (Engine compiles it before submitting)")
        xgr = _xgrammar()
        self._xgr = xgr
        self.matcher = xgr.GrammarMatcher(structured.compiled)
        self.vocab_size = structured.compiled.tokenizer_info.vocab_size
        self.bitmask = xgr.allocate_token_bitmask(1, self.vocab_size)  # (1, ceil(vocab / 32)) int32, CPU

    def mask_(self, logits: torch.Tensor) -> None:
        """logits (1, vocab), in place: -inf where the grammar forbids the token."""
        self.matcher.fill_next_token_bitmask(self.bitmask)
        bitmask = (
            self.bitmask if logits.device.type == "cpu" else self.bitmask.to(logits.device, non_blocking=True)
        )
        self._xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=self.vocab_size)

    def accept(self, token: int) -> None:
        if not self.matcher.is_terminated() and not self.matcher.accept_token(token):
            raise RuntimeError(f"token {token} was sampled though the grammar forbids it")
