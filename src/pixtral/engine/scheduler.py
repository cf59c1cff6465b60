"""Continuous batching on one model: requests join and leave between decode steps.

Each step of the loop (a background thread):
1. admit waiting requests whose KV cache fits the byte budget (a request that could never fit is rejected
   with a clear error; one that does not fit now waits);
2. prefill at most `prefill_chunk` prompt tokens of one request, so a new prompt never stalls the running
   decodes for longer than one chunk (images are encoded once per content, through the image cache; a cached
   prompt prefix skips its share of the prefill). The n choices of one prompt (`submit_choices`) are admitted
   together and prefilled once: the others copy the first one's KV cache and sample from its last logits;
3. decode one token for every running request in one batched forward: requests whose KV cache is a slot of
   the shared KV pool (model/kv_cache.py: `max_batch` slots, each of `kv_pool_slot_tokens` positions) attend
   in one call per layer; a request longer than a slot (or past `max_batch` with its sibling choices) has a
   buffer of its own, and a step that holds one runs attention row by row.
An error while serving one request (its images, its prefill, its decode forward or its sampling) fails that
request alone, with the error on its queue; the others carry on (a batched forward that raises is rerun row by
row to find the culprit).
Sampling is batched on the device (`_emit`: sampling.sample_batch), each row with its request's parameters
and seeded generator, so a request's tokens do not depend on what it was batched with; the chosen ids reach
the host in one transfer per step. Tokens go to each request's queue; the consumer (engine.py) turns them
into text.
"""

from __future__ import annotations

import atexit
import queue
import threading
import weakref
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from pixtral.engine.generate import seeded_generator
from pixtral.engine.image_cache import ImageFeatureCache, image_hash
from pixtral.engine.prefix_cache import PrefixCache, block_keys
from pixtral.engine.sampling import (
    SamplingParams,
    TokenHistory,
    TokenLogprobs,
    process_logits,
    sample_batch,
    token_logprobs,
)
from pixtral.engine.structured import GrammarState
from pixtral.errors import InputError
from pixtral.model.kv_cache import KVPool, SequenceKVCache
from pixtral.model.pixtral import Pixtral, no_images


@dataclass(frozen=True)
class SchedulerConfig:
    kv_budget_bytes: int = 2 * 1024**3
    max_batch: int = 32
    prefill_chunk: int = 512  # prompt tokens per step
    image_cache_bytes: int = 256 * 1024**2
    prefix_cache_bytes: int = 512 * 1024**2
    prefix_block: int = 32
    # Positions per KV-pool slot: None = the KV budget shared by max_batch slots (at most the model's context
    # and 16384); 0 = no pool (every request its own buffer, decode attention row by row). The pool is made
    # at the first request and charged like any cache: each request still charges its bytes to the budget.
    kv_pool_slot_tokens: int | None = None


@dataclass
class Request:
    prompt_ids: list[int]
    images: list[np.ndarray]
    params: SamplingParams
    stop_ids: frozenset[int]
    events: queue.Queue = field(default_factory=queue.Queue)  # token ids, then a Finished
    cancelled: threading.Event = field(default_factory=threading.Event)
    # scheduler state
    cache: SequenceKVCache | None = None
    features: torch.Tensor | None = None  # (n_img_tokens, dim), in prompt order
    image_hashes: list[str] = field(default_factory=list)
    prefilled: int = 0
    generated: int = 0
    last_token: int = -1
    generator: torch.Generator | None = None
    history: TokenHistory | None = None  # for the penalties, on the logits' device (sampling.py)
    grammar: GrammarState | None = None  # with params.structured: the matcher (structured.py)
    # With params.logprobs: one entry per generated token, appended before the token is put on `events`.
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    leader: Request | None = None  # a sibling choice waiting for this request's prefill
    followers: list[Request] = field(default_factory=list)  # the other choices of the same prompt

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass(frozen=True)
class Finished:
    reason: str  # "stop" | "length" | "cancelled" | "error"
    error: Exception | None = None


class Scheduler:
    def __init__(self, model: Pixtral, config: SchedulerConfig | None = None) -> None:
        self.model = model
        self.config = config = config or SchedulerConfig()
        self.image_cache = ImageFeatureCache(config.image_cache_bytes)
        self.prefix_cache = PrefixCache(config.prefix_cache_bytes, config.prefix_block)
        self.kv_bytes_used = 0
        self.steps = 0
        self.prefill_tokens = 0  # prompt tokens run through the model (cached prefixes and copies excluded)
        self.finished_requests = 0
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []
        self._work = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._pool: KVPool | None = None

    # ---- public, thread-safe ----------------------------------------------------------------------

    def submit(
        self,
        prompt_ids: list[int],
        images: list[np.ndarray],
        params: SamplingParams,
        stop_ids: frozenset[int],
    ) -> Request:
        return self.submit_choices(prompt_ids, images, [params], stop_ids)[0]

    def submit_choices(
        self,
        prompt_ids: list[int],
        images: list[np.ndarray],
        params: list[SamplingParams],
        stop_ids: frozenset[int],
    ) -> list[Request]:
        """One request per entry of `params` (the choices of one prompt), admitted together; the prompt is
        prefilled (and its images encoded) once, by the first, whose KV cache the others copy."""
        requests = [Request(list(prompt_ids), images, p, stop_ids) for p in params]
        leader = requests[0]
        for follower in requests[1:]:
            follower.leader = leader
        leader.followers = requests[1:]
        need = sum(self._kv_bytes(r) for r in requests)
        if need > self.config.kv_budget_bytes:
            raise InputError(
                f"this request needs {_human(need)} of KV cache ({len(prompt_ids)} prompt tokens + "
                f"{params[0].max_tokens} new tokens{f', × {len(params)} choices' if len(params) > 1 else ''}) "
                f"but the budget is {_human(self.config.kv_budget_bytes)}: lower max_tokens or n, or shorten "
                "the prompt"
            )
        with self._work:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._waiting.append(leader)
            self._work.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="pixtral-scheduler", daemon=True)
                self._thread.start()
                # A daemon thread still inside a torch op while the interpreter tears torch down aborts the
                # process ("terminate called without an active exception"): stop and join it first.
                atexit.register(_close_at_exit, weakref.ref(self))
        return requests

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the loop thread after its current step; requests not finished get Finished("cancelled")."""
        with self._work:
            self._closed = True
            self._work.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        for request in [*self._running, *(r for w in self._waiting for r in (w, *w.followers))]:
            request.events.put(Finished("cancelled"))
        self._running.clear()
        self._waiting.clear()

    @property
    def n_waiting(self) -> int:
        return len(self._waiting)

    @property
    def n_running(self) -> int:
        return len(self._running)

    def stats(self) -> dict[str, int]:
        return {
            "requests_waiting": self.n_waiting,
            "requests_running": self.n_running,
            "requests_finished": self.finished_requests,
            "kv_bytes_used": self.kv_bytes_used,
            "kv_budget_bytes": self.config.kv_budget_bytes,
            "image_cache_hits": self.image_cache.hits,
            "image_cache_misses": self.image_cache.misses,
            "prefix_cache_hits": self.prefix_cache.hits,
            "prefix_cache_misses": self.prefix_cache.misses,
            "prefix_cache_tokens_reused": self.prefix_cache.tokens_reused,
            "steps": self.steps,
            "prefill_tokens": self.prefill_tokens,
        }

    # ---- the loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._work:
                while not self._waiting and not self._running and not self._closed:
                    self._work.wait()
                if self._closed:
                    return
            try:
                self.step()
            except Exception as e:  # a bug must not leave clients waiting forever
                for request in list(self._running):
                    self._finish(request, Finished("error", e))

    @torch.inference_mode()
    def step(self) -> None:
        self.steps += 1
        self._drop_cancelled()
        self._admit()
        prefilling = [r for r in self._running if r.prefilled < len(r.prompt_ids) and r.leader is None]
        if prefilling:
            try:
                self._prefill_chunk(prefilling[0])
            except Exception as e:  # a bad prompt fails its own request only
                self._finish(prefilling[0], Finished("error", e))
        decoding = [r for r in self._running if r.prefilled == len(r.prompt_ids) and r.generated > 0]
        if decoding:
            self._decode(decoding)

    def _kv_bytes(self, request: Request) -> int:
        n = len(request.prompt_ids) + request.params.max_tokens
        return n * SequenceKVCache.bytes_per_token(self.model.config.text, self.model.dtype)

    def _drop_cancelled(self) -> None:
        for request in [r for r in self._running if r.cancelled.is_set()]:
            self._finish(request, Finished("cancelled"))
        with self._work:
            for request in [r for r in self._waiting if all(c.cancelled.is_set() for c in (r, *r.followers))]:
                self._waiting.remove(request)
                for choice in (request, *request.followers):
                    choice.events.put(Finished("cancelled"))

    def _admit(self) -> None:
        while self._waiting and len(self._running) < self.config.max_batch:
            request = self._waiting[0]
            choices = [request, *request.followers]
            need = sum(self._kv_bytes(r) for r in choices)
            if self.kv_bytes_used + need > self.config.kv_budget_bytes:
                return  # waits for memory to free up
            with self._work:
                self._waiting.popleft()
            try:
                for choice in choices:
                    self._start(choice)
            except Exception as e:
                for choice in choices:
                    if choice.cache is not None and choice.cache.pool is not None:
                        choice.cache.pool.release(choice.cache)  # give the slot back
                    choice.cache = None
                    choice.events.put(Finished("error", e))
                continue
            self.kv_bytes_used += need
            self._running += choices

    def _start(self, request: Request) -> None:
        """Allocate the KV cache and the generator; a leader also gets its prompt ready (_prepare_prompt); a
        follower waits for its leader's prefill (see _prefill_chunk)."""
        request.cache = self._allocate(len(request.prompt_ids) + request.params.max_tokens)
        if not request.params.greedy:
            request.generator = seeded_generator(request.params.seed, self.model.device)
        if request.leader is None:
            self._prepare_prompt(request)

    def _allocate(self, max_len: int) -> SequenceKVCache:
        """A slot of the KV pool when one is free and long enough, else a buffer of its own."""
        if self._pool is None and self.config.kv_pool_slot_tokens != 0:
            slot_len = self.config.kv_pool_slot_tokens
            if slot_len is None:
                per_token = SequenceKVCache.bytes_per_token(self.model.config.text, self.model.dtype)
                share = self.config.kv_budget_bytes // (self.config.max_batch * per_token)
                slot_len = min(share, self.model.config.text.max_seq_len, 16384)
            if slot_len > 0:
                self._pool = KVPool.for_model(self.model, self.config.max_batch, slot_len)
        cache = self._pool.allocate(max_len) if self._pool is not None else None
        return cache or SequenceKVCache.for_model(self.model, max_len)

    def _prepare_prompt(self, request: Request) -> None:
        """Encode the images (cached by content) and reuse a cached prompt prefix."""
        device = self.model.device
        request.image_hashes = [image_hash(im) for im in request.images]
        features = []
        for pixels, key in zip(request.images, request.image_hashes, strict=True):
            cached = self.image_cache.get(key)
            if cached is None:  # one image per call: exact reuse
                cached = self.model.encode_images([torch.from_numpy(pixels).to(device)])
                self.image_cache.put(key, cached)
            features.append(cached)
        request.features = torch.cat(features) if features else None
        keys = block_keys(
            request.prompt_ids, request.image_hashes, self.model.config.vision, self.prefix_cache.block
        )
        # Reuse at most len - 1 tokens: the last prompt token must run to give the first logits.
        hit = self.prefix_cache.lookup(keys, len(request.prompt_ids) - 1)
        if hit is not None:
            request.cache.copy_prefix_from(*hit)
            request.prefilled = hit[0].shape[1]

    def _prefill_chunk(self, request: Request) -> None:
        start = request.prefilled
        end = min(len(request.prompt_ids), start + self.config.prefill_chunk)
        chunk = request.prompt_ids[start:end]
        ids = torch.tensor([chunk], device=self.model.device)  # (1, T)
        image_id = self.model.config.vision.image_token_id
        features = None
        if request.features is not None:  # counted on the host list: no device sync
            before = sum(1 for t in request.prompt_ids[:start] if t == image_id)
            inside = sum(1 for t in chunk if t == image_id)
            features = request.features[before : before + inside] if inside else None
        last = end == len(request.prompt_ids)
        logits = self.model(ids, image_features=features, caches=[request.cache], last_only=last)
        request.prefilled = end
        self.prefill_tokens += end - start
        if last:
            full_blocks = (len(request.prompt_ids) - 1) // self.prefix_cache.block
            if full_blocks:
                keys = block_keys(
                    request.prompt_ids,
                    request.image_hashes,
                    self.model.config.vision,
                    self.prefix_cache.block,
                )[:full_blocks]
                self.prefix_cache.store(keys, request.cache.k, request.cache.v)
            n = len(request.prompt_ids)
            rows = [request]  # the n choices sample their first tokens from the same logits, in one batch
            for follower in request.followers:
                if follower in self._running and follower.leader is request:
                    follower.cache.copy_prefix_from(request.cache.k[:, :n], request.cache.v[:, :n])
                    follower.prefilled, follower.leader = n, None
                    rows.append(follower)
            self._emit(rows, logits[0, -1:].expand(len(rows), -1))

    def _decode(self, batch: list[Request]) -> None:
        """One token for every request of the batch. A request whose forward or sampling raises fails alone:
        when the batched forward raises, each row is rerun alone (a row never depends on the others, and a
        failed forward leaves every cache's length unchanged), so only the culprit gets the error."""
        ids = torch.tensor([[r.last_token] for r in batch], device=self.model.device)  # (B, 1)
        try:
            logits = self.model(ids, image_mask=no_images(ids), caches=[r.cache for r in batch])[:, -1]
        except Exception as e:
            if len(batch) == 1:
                self._finish(batch[0], Finished("error", e))
                return
            for request in batch:
                self._decode([request])
            return
        self._emit(batch, logits)

    def _emit(self, batch: list[Request], logits: torch.Tensor) -> None:
        """Sample one token for every request of `batch` from its row of logits (B, vocab), in one batched call
        on the device (sampling.sample_batch: per-row parameters and generators), then move the B chosen ids
        to the host in one transfer. Rows with a grammar, logit_bias, min_tokens or penalties get their logits
        processed row by row first (device ops, no host sync); logprobs are taken in one batched call. A
        request whose own part raises fails alone; a batched draw that raises is retried row by row."""
        raw = logits.float()  # (B, vocab)
        masked, processed = raw, raw
        ok: list[int] = []  # the rows still in the batch
        for row, request in enumerate(batch):
            params = request.params
            try:
                row_logits = raw[row : row + 1]  # (1, vocab)
                if params.structured is not None:  # the grammar's mask comes first, as vLLM's bitmask
                    if request.grammar is None:
                        request.grammar = GrammarState(params.structured)
                    row_logits = row_logits.clone()
                    request.grammar.mask_(row_logits)
                    if masked is raw:
                        masked = raw.clone()
                    masked[row] = row_logits[0]
                if params.penalised and request.history is None:
                    request.history = TokenHistory(request.prompt_ids, raw.shape[-1], raw.device)
                out = process_logits(row_logits, params, request.history, request.generated, request.stop_ids)
                if out is not row_logits or params.structured is not None:
                    if processed is raw:
                        processed = raw.clone()
                    processed[row] = out[0]
                ok.append(row)
            except Exception as e:
                self._finish(request, Finished("error", e))
        if len(ok) < len(batch):
            index = torch.tensor(ok, device=raw.device)
            batch = [batch[i] for i in ok]
            masked, processed = masked.index_select(0, index), processed.index_select(0, index)
        if not batch:
            return
        try:
            sampled = sample_batch(processed, [r.params for r in batch], [r.generator for r in batch])  # (B,)
        except Exception as e:
            if len(batch) == 1:
                self._finish(batch[0], Finished("error", e))
                return
            for row, request in enumerate(batch):  # find the culprit: each row alone
                try:
                    one = sample_batch(processed[row : row + 1], [request.params], [request.generator])
                except Exception as e:
                    self._finish(request, Finished("error", e))
                    continue
                self._accept_all([request], one, masked[row : row + 1])
            return
        self._accept_all(batch, sampled, masked)

    def _accept_all(self, batch: list[Request], sampled: torch.Tensor, masked: torch.Tensor) -> None:
        """Record the (B,) sampled ids: histories and logprobs on the device, then one transfer to the host."""
        for row, request in enumerate(batch):
            if request.history is not None:
                request.history.add(sampled[row : row + 1])
        want = [row for row, r in enumerate(batch) if r.params.logprobs is not None]
        if want:
            index = torch.tensor(want, device=sampled.device)
            k = max(batch[row].params.logprobs for row in want)
            entries = token_logprobs(masked.index_select(0, index), sampled.index_select(0, index), k)
            for row, entry in zip(want, entries, strict=True):
                n = batch[row].params.logprobs
                batch[row].logprobs.append(TokenLogprobs(entry.token_id, entry.logprob, entry.top[:n]))
        for request, token in zip(batch, sampled.tolist(), strict=True):  # the one host transfer
            try:
                self._record(request, token)
            except Exception as e:
                self._finish(request, Finished("error", e))

    def _record(self, request: Request, token: int) -> None:
        """The request's new token: the grammar advances, then a stop token, max_tokens or nothing ends it."""
        if request.grammar is not None:
            request.grammar.accept(token)
        request.generated += 1
        request.last_token = token
        if token in request.stop_ids:
            self._finish(request, Finished("stop"))
            return
        request.events.put(token)
        if request.generated >= request.params.max_tokens:
            self._finish(request, Finished("length"))

    def _finish(self, request: Request, outcome: Finished) -> None:
        if request in self._running:
            self._running.remove(request)
            self.kv_bytes_used -= self._kv_bytes(request)
        if request.cache is not None and request.cache.pool is not None:
            request.cache.pool.release(request.cache)  # the slot is free for the next request
        request.cache = None  # frees the KV memory
        request.features = None
        for follower in request.followers:  # still waiting for this prefill: each prefills on its own
            if follower.leader is request:
                follower.leader = None
                if follower in self._running:
                    try:
                        self._prepare_prompt(follower)
                    except Exception as e:
                        self._finish(follower, Finished("error", e))
        self.finished_requests += 1
        request.events.put(outcome)


def _close_at_exit(ref: weakref.ref[Scheduler]) -> None:
    scheduler = ref()
    if scheduler is not None:
        scheduler.close(timeout_s=10.0)


def _human(n_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.1f} {unit}" if unit != "B" else f"{n_bytes} B"
        n_bytes /= 1024
    return f"{n_bytes:.1f} GiB"
