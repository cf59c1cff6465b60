"""Sampling parameters and the choice of the next token from logits.

The order is vLLM's (v1 sampler), so a request means the same thing on both servers:
1. logprobs, when asked for, are taken from the model's raw logits (vLLM's default `raw_logprobs`: before
   logit_bias, penalties and temperature);
2. `process_logits`: logit_bias is added, min_tokens masks the stop tokens, then the penalties: repetition
   over prompt + generated tokens (a positive logit divided by the penalty, a negative one multiplied),
   frequency and presence over generated tokens only (`logit -= frequency * count + presence * (count > 0)`);
3. `sample_next`: greedy takes the argmax of the processed logits; otherwise temperature, then min_p (drop
   tokens whose probability is below min_p times the most likely one's), then top-k, then top-p, then a draw.
Every step is a vectorised torch function of (B, vocab) logits and per-row tensors on the logits' device; the
request's state (`TokenHistory`: prompt-token mask and generated-token counts) lives on that device too.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from pixtral.engine.structured import StructuredOutput
from pixtral.errors import InputError

# Below this temperature sampling is greedy: dividing logits by ~0 overflows to inf - inf = nan.
GREEDY_BELOW_TEMPERATURE = 1e-5
MAX_LOGPROBS = 20  # OpenAI's limit on top_logprobs (and vLLM's default max_logprobs is 20)
MAX_LOGIT_BIAS = 100.0  # OpenAI: each bias is in [-100, 100]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 (or below GREEDY_BELOW_TEMPERATURE) = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1  # choices for one prompt; choice i is seeded seed + i (engine.py)
    min_p: float = 0.0  # 0 = off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # 1 = off
    logit_bias: Mapping[int, float] = field(default_factory=dict)  # token id -> added to its logit
    min_tokens: int = 0  # the stop tokens (EOS, stop_token_ids) are masked until this many are generated
    ignore_eos: bool = False  # EOS is then a plain token (it produces no text)
    stop_token_ids: list[int] = field(default_factory=list)  # more tokens that end generation, like EOS
    logprobs: int | None = None  # None = off; k = the chosen token's logprob and the k most likely
    structured: StructuredOutput | None = None  # a grammar every token must follow (structured.py)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise InputError(f"n must be at least 1, got {self.n}")
        if self.max_tokens < 1:
            raise InputError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 100.0:
            raise InputError(f"temperature must be between 0 and 100, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0 (0 turns it off), got {self.top_k}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InputError("stop strings must be non-empty strings")
        if not 0.0 <= self.min_p <= 1.0:
            raise InputError(f"min_p must be in [0, 1], got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise InputError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if not (0.0 < self.repetition_penalty and math.isfinite(self.repetition_penalty)):
            raise InputError(
                f"repetition_penalty must be > 0 (1 turns it off), got {self.repetition_penalty}"
            )
        for token, bias in self.logit_bias.items():
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise InputError(f"logit_bias keys must be token ids >= 0, got {token!r}")
            if not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
                raise InputError(f"logit_bias for token {token} must be in [-100, 100], got {bias}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise InputError(
                f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}"
            )
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise InputError(f"stop_token_ids must be token ids >= 0, got {self.stop_token_ids}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise InputError(f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")
        if self.structured is not None and (self.ignore_eos or self.min_tokens):
            # The grammar ends with EOS once the value is complete; hiding EOS then would leave no token.
            raise InputError("structured output cannot be combined with ignore_eos or min_tokens")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW_TEMPERATURE or self.top_k == 1

    @property
    def penalised(self) -> bool:
        """Whether any penalty needs the request's token history."""
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1

    def stop_ids(self, eos_id: int) -> frozenset[int]:
        """The tokens that end generation: EOS (unless ignore_eos) and stop_token_ids."""
        return frozenset(self.stop_token_ids) | (frozenset() if self.ignore_eos else frozenset({eos_id}))

    def check_vocab(self, vocab_size: int) -> None:
        """Raise InputError naming the field when a token id is outside the vocabulary."""
        for name, ids in (("logit_bias", self.logit_bias), ("stop_token_ids", self.stop_token_ids)):
            bad = [t for t in ids if t >= vocab_size]
            if bad:
                raise InputError(
                    f"{name} has token id {bad[0]}, outside the vocabulary (0..{vocab_size - 1})"
                )


class TokenHistory:
    """A request's tokens as tensors on the logits' device, for the penalties: which ids the prompt holds
    and how often each id was generated. Updating it is a device op (no host sync)."""

    def __init__(self, prompt_ids: list[int], vocab_size: int, device: torch.device | str) -> None:
        self.prompt_mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)  # (vocab,)
        if prompt_ids:
            self.prompt_mask[torch.tensor(prompt_ids, device=device)] = True
        self.output_counts = torch.zeros(vocab_size, dtype=torch.int32, device=device)  # (vocab,)

    def add(self, tokens: torch.Tensor) -> None:
        """(n,) generated token ids, on the same device."""
        self.output_counts.index_add_(0, tokens, torch.ones_like(tokens, dtype=torch.int32))


def apply_penalties(
    logits: torch.Tensor,
    prompt_mask: torch.Tensor,
    output_counts: torch.Tensor,
    presence: torch.Tensor,
    frequency: torch.Tensor,
    repetition: torch.Tensor,
) -> torch.Tensor:
    """vLLM's penalties. logits (B, vocab) float; prompt_mask (B, vocab) bool; output_counts (B, vocab) int;
    presence, frequency, repetition (B,). Returns new (B, vocab) logits.

    repetition: for every id in the prompt or generated so far, logit / r if logit > 0 else logit * r;
    then logit -= frequency * count + presence * (count > 0), count over generated tokens only."""
    seen = prompt_mask | (output_counts > 0)  # (B, vocab)
    r = torch.where(seen, repetition[:, None], torch.ones_like(logits))  # (B, vocab)
    logits = torch.where(logits > 0, logits / r, logits * r)
    counts = output_counts.to(logits.dtype)
    return logits - frequency[:, None] * counts - presence[:, None] * (counts > 0).to(logits.dtype)


def apply_logit_bias(logits: torch.Tensor, ids: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """logits (B, vocab); ids (B, n) long; bias (B, n) float -> logits with bias added at ids."""
    return logits.scatter_add(-1, ids, bias.to(logits.dtype))


def mask_tokens(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """logits (B, vocab); ids (B, n) long -> logits with -inf at ids (min_tokens hides the stop tokens)."""
    return logits.scatter(-1, ids, float("-inf"))


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """logits (B, vocab) after temperature; min_p (B,) -> -inf where prob < min_p * max prob (vLLM)."""
    probs = torch.softmax(logits, dim=-1)
    threshold = probs.amax(dim=-1, keepdim=True) * min_p[:, None]  # (B, 1)
    return logits.masked_fill(probs < threshold, float("-inf"))


def process_logits(
    logits: torch.Tensor,
    params: SamplingParams,
    history: TokenHistory | None,
    n_generated: int,
    stop_ids: Collection[int],
) -> torch.Tensor:
    """One request's (1, vocab) float32 logits -> the logits it samples from: logit_bias, min_tokens, then
    penalties (module docstring). Neutral parameters return `logits` itself."""
    device = logits.device
    if params.logit_bias:
        ids = torch.tensor([list(params.logit_bias)], device=device)  # (1, n)
        bias = torch.tensor([list(params.logit_bias.values())], device=device)  # (1, n)
        logits = apply_logit_bias(logits, ids, bias)
    if n_generated < params.min_tokens and stop_ids:
        logits = mask_tokens(logits, torch.tensor([sorted(stop_ids)], device=device))
    if params.penalised:
        if history is None:
            raise ValueError("penalties need the request's TokenHistory")

        def row(value: float) -> torch.Tensor:
            return torch.tensor([value], dtype=logits.dtype, device=device)

        logits = apply_penalties(
            logits,
            history.prompt_mask[None],
            history.output_counts[None],
            row(params.presence_penalty),
            row(params.frequency_penalty),
            row(params.repetition_penalty),
        )
    return logits


def sample_next(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, vocab) float32 logits, every row with the same parameters and generator -> (B,) token ids
    (`sample_batch` with one request's parameters on every row; the rows draw from `generator` in turn)."""
    return sample_batch(logits, [params] * logits.shape[0], [generator] * logits.shape[0])


def sample_batch(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> torch.Tensor:
    """(B, vocab) float32 logits (after process_logits), one SamplingParams and generator per row -> (B,)
    token ids on the logits' device, with no host sync.

    Greedy rows take the argmax. Sampled rows: temperature, then min_p (drop tokens whose probability is below
    min_p times the most likely one's), then top-k, then top-p (nucleus: keep the smallest set of tokens whose
    probability reaches top_p, always at least one), then a draw by the exponential race: the argmax of
    probs / q with q ~ Exp(1) drawn from the row's own generator (the winner is token i with probability
    p_i / sum p, so no renormalisation is needed). Each filter runs on the rows that ask for it only, and each
    row's noise comes from its generator, so a row's token depends on its logits, parameters and generator
    alone, never on the rows it is batched with (a seeded request gives the same tokens alone or in a batch)."""
    b = logits.shape[0]
    out = logits.argmax(dim=-1)  # (B,): the greedy rows' tokens (the others are replaced below)
    rows = [i for i in range(b) if not params[i].greedy]
    if not rows:
        return out
    device = logits.device
    chosen = [params[i] for i in rows]
    index = None if len(rows) == b else torch.tensor(rows, device=device)
    x = logits if index is None else logits.index_select(0, index)  # (S, vocab), S = sampled rows
    x = x / torch.tensor([p.temperature for p in chosen], dtype=x.dtype, device=device)[:, None]
    x = _on_rows(
        x,
        [p.min_p for p in chosen],
        [p.min_p > 0 for p in chosen],
        lambda r, v: apply_min_p(r, _row_values(r, v)),
    )
    vocab = x.shape[-1]
    x = _on_rows(x, [p.top_k for p in chosen], [0 < p.top_k < vocab for p in chosen], apply_top_k)
    probs = torch.softmax(x, dim=-1)  # (S, vocab)
    probs = _on_rows(probs, [p.top_p for p in chosen], [p.top_p < 1.0 for p in chosen], apply_top_p)
    q = torch.empty_like(probs)  # (S, vocab) Exp(1) noise, each row from its own generator
    for j, i in enumerate(rows):
        q[j].exponential_(generator=generators[i])
    q.clamp_(min=torch.finfo(q.dtype).tiny)  # a zero draw would make 0 / 0 = nan for a dropped token
    drawn = (probs / q).argmax(dim=-1)  # (S,)
    return drawn if index is None else out.index_copy(0, index, drawn)


def _on_rows(x: torch.Tensor, values: list, active: list[bool], fn) -> torch.Tensor:
    """fn(x[rows], values of those rows) on the active rows of x (S, vocab) only; the others are untouched,
    so a row's result never depends on whether its neighbours use the filter."""
    if not any(active):
        return x
    rows = [j for j, a in enumerate(active) if a]
    vals = [values[j] for j in rows]
    if len(rows) == x.shape[0]:
        return fn(x, vals)
    index = torch.tensor(rows, device=x.device)
    return x.index_copy(0, index, fn(x.index_select(0, index), vals))


def _row_values(x: torch.Tensor, values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=x.dtype, device=x.device)  # (n,)


def apply_top_k(logits: torch.Tensor, k: list[int]) -> torch.Tensor:
    """logits (n, vocab); k: n ints in (0, vocab) -> -inf below each row's k-th largest logit."""
    top = torch.topk(logits, max(k), dim=-1).values  # (n, max k)
    kth = top.gather(-1, torch.tensor(k, device=logits.device)[:, None] - 1)  # (n, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(probs: torch.Tensor, top_p: list[float]) -> torch.Tensor:
    """probs (n, vocab); top_p: n floats -> probs with 0 outside each row's nucleus (the smallest set of most likely
    tokens whose mass reaches top_p; the most likely token always stays). Not renormalised."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of strictly more likely tokens
    drop = (
        before >= _row_values(probs, top_p)[:, None]
    )  # top_p below float32's range rounds to 0 and would drop every token
    drop[..., 0] = False
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))


@dataclass(frozen=True)
class TokenLogprobs:
    """One generated token's log-probability and the `top` most likely ids with theirs (most likely first),
    from the raw logits (before logit_bias, penalties and temperature, as vLLM's default)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> list[TokenLogprobs]:
    """logits (B, vocab) raw; tokens (B,) chosen ids -> one TokenLogprobs per row, with the k most likely."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, vocab)
    chosen = logp.gather(-1, tokens[:, None])[:, 0]  # (B,)
    top = logp.topk(k, dim=-1) if k else None  # (B, k)
    chosen_l = chosen.tolist()
    top_v = top.values.tolist() if top is not None else [[] for _ in chosen_l]
    top_i = top.indices.tolist() if top is not None else [[] for _ in chosen_l]
    return [
        TokenLogprobs(int(t), lp, list(zip(ti, tv, strict=True)))
        for t, lp, ti, tv in zip(tokens.tolist(), chosen_l, top_i, top_v, strict=True)
    ]
