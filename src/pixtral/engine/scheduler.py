"""Continuous batching on one model, as vLLM schedules: every step is one forward over a token budget.

Each step of the loop (a background thread):
1. the running requests each get their next tokens, within `max_num_batched_tokens` for the whole step:
   first every decode (one token), then prefill chunks of the requests still prefilling, in admission order;
   then waiting requests are admitted (at most `max_num_seqs` running) and prefilled with what is left. A
   prefill chunk computes no logits unless it ends the prompt. Images are encoded once per content, at
   admission, through the image cache; a cached prompt prefix skips its share of the prefill (its blocks are
   shared, not copied). The n choices of one prompt (`submit_choices`) are admitted together and prefilled
   once: the others share the first one's full prompt blocks, copy its partly written last block, and sample
   from its last logits;
2. the KV cache is a pool of blocks (model/kv_cache.py: `PagedKVPool`, `kv_budget_bytes` in all, blocks of
   `kv_block_size` positions) charged as sequences grow. When a decode finds no free block, the most
   recently admitted request is preempted (recompute): its blocks are released and it goes back to the front of
   the waiting queue with its generated tokens appended to its prompt, to be prefilled again and resumed
   where it was (its sampling generator and grammar state kept, so its output does not change). Only a
   request whose prompt + max_tokens exceeds the whole pool is refused, at submission;
3. the step's new tokens (decodes and prefill chunks of many requests) run as one packed forward
   (`PagedBatch`): every layer attends all the one-token rows in one call and each chunk in one call, and
   the output head runs only on the positions that sample.
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
import logging
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
from pixtral.model.kv_cache import PagedBatch, PagedKVPool
from pixtral.model.pixtral import ImageTokenMismatch, Pixtral
from pixtral.units import format_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchedulerConfig:
    kv_budget_bytes: int = 2 * 1024**3  # the KV pool (--kv-cache-memory)
    # CUDA only: the pool takes this fraction of the device's free memory when it is made (None: the bytes)
    kv_memory_fraction: float | None = None
    kv_block_size: int = 16  # positions per KV block
    max_num_seqs: int = 32  # running requests at most (--max-num-seqs)
    max_num_batched_tokens: int = (
        512  # new tokens per step: decodes + prefill chunks (--max-num-batched-tokens)
    )
    image_cache_bytes: int = 256 * 1024**2
    prefix_cache_bytes: int = 512 * 1024**2  # at most this many bytes of pool blocks kept as cached prefixes
    compile: bool | None = None  # torch.compile the decode step (engine/compiled.py); None: on CUDA only

    def __post_init__(self) -> None:
        for name in ("kv_block_size", "max_num_seqs", "max_num_batched_tokens", "kv_budget_bytes"):
            if getattr(self, name) < 1:
                raise InputError(f"scheduler setting {name} must be at least 1, got {getattr(self, name)}")
        if self.kv_memory_fraction is not None and not 0 < self.kv_memory_fraction <= 1:
            raise InputError(f"the KV memory fraction must be in (0, 1], got {self.kv_memory_fraction}")


@dataclass(eq=False)  # compared by identity: two choices of one prompt are different requests
class Request:
    prompt_ids: list[int]
    images: list[np.ndarray]
    params: SamplingParams
    stop_ids: frozenset[int]
    events: queue.Queue = field(default_factory=queue.Queue)  # token ids, then a Finished
    cancelled: threading.Event = field(default_factory=threading.Event)
    # scheduler state
    tokens: list[int] = field(default_factory=list)  # prompt + generated: what the KV cache must hold
    blocks: list[int] = field(default_factory=list)  # its block table in the KV pool
    computed: int = 0  # positions of `tokens` whose keys/values are in the pool
    features: torch.Tensor | None = None  # (n_img_tokens, dim), in prompt order
    image_hashes: list[str] = field(default_factory=list)
    prefix_keys: list[bytes] | None = None  # the prefix cache's key of each full block of the prompt
    generated: int = 0
    preempted: int = 0  # times its KV cache was dropped to make room (then recomputed)
    generator: torch.Generator | None = None
    history: TokenHistory | None = None  # for the penalties, on the logits' device (sampling.py)
    grammar: GrammarState | None = None  # with params.structured: the matcher (structured.py)
    # With params.logprobs: one entry per generated token, appended before the token is put on `events`.
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    leader: Request | None = None  # a sibling choice waiting for this request's prefill
    followers: list[Request] = field(default_factory=list)  # the other choices of the same prompt

    def __post_init__(self) -> None:
        self.tokens = list(self.prompt_ids)

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
        self.steps = 0
        self.prefill_tokens = 0  # prompt tokens run through the model (cached prefixes and shares excluded)
        self.finished_requests = 0
        self.preemptions = 0
        self.last_step: tuple[int, int] = (0, 0)  # (decode rows, prefill tokens) of the latest step
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []
        self._work = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._pool: PagedKVPool | None = None
        self._block_bytes = PagedKVPool.bytes_per_block(model.config.text, model.dtype, config.kv_block_size)
        self._n_blocks = self._pool_blocks()
        self.prefix_cache = PrefixCache(config.prefix_cache_bytes // self._block_bytes, config.kv_block_size)
        self._decode_step = None  # the compiled decode forward, made on first use
        self._compile = config.compile if config.compile is not None else model.device.type == "cuda"

    def _pool_blocks(self) -> int:
        budget = self.config.kv_budget_bytes
        fraction = self.config.kv_memory_fraction
        if fraction is not None:
            if self.model.device.type != "cuda":
                raise InputError(
                    f"--kv-cache-memory {fraction * 100:g}%: a share of free memory needs a CUDA device; "
                    f"on {self.model.device} give GiB (e.g. 4)"
                )
            free, _ = torch.cuda.mem_get_info(self.model.device)
            budget = int(free * fraction)
        return max(1, budget // self._block_bytes)

    @property
    def kv_capacity_tokens(self) -> int:
        """Positions the KV pool holds in all."""
        return self._n_blocks * self.config.kv_block_size

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
        prefilled (and its images encoded) once, by the first, whose prompt blocks the others share."""
        requests = [Request(list(prompt_ids), images, p, stop_ids) for p in params]
        leader = requests[0]
        for follower in requests[1:]:
            follower.leader = leader
        leader.followers = requests[1:]
        longest = len(prompt_ids) + max(p.max_tokens for p in params)
        if longest > self.kv_capacity_tokens:  # could not finish even alone in the whole pool
            need = longest * self._block_bytes // self.config.kv_block_size
            raise InputError(
                f"this request needs {format_bytes(need)} of KV cache ({len(prompt_ids)} prompt tokens + "
                f"{max(p.max_tokens for p in params)} new tokens) but the budget is "
                f"{format_bytes(self._n_blocks * self._block_bytes)} (--kv-cache-memory): lower max_tokens or "
                "shorten the prompt"
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

    @property
    def kv_bytes_used(self) -> int:
        """Bytes of the KV blocks held by requests (charged as they fill; a shared block counts once, a block
        only the prefix cache holds not at all)."""
        if self._pool is None:
            return 0
        return (self._n_blocks - self._pool.n_available) * self._block_bytes

    def stats(self) -> dict[str, int]:
        return {
            "requests_waiting": self.n_waiting,
            "requests_running": self.n_running,
            "requests_finished": self.finished_requests,
            "requests_preempted": self.preemptions,
            "kv_bytes_used": self.kv_bytes_used,
            "kv_budget_bytes": self._n_blocks * self._block_bytes,
            "image_cache_hits": self.image_cache.hits,
            "image_cache_misses": self.image_cache.misses,
            "prefix_cache_hits": self.prefix_cache.hits,
            "prefix_cache_misses": self.prefix_cache.misses,
            "prefix_cache_tokens_reused": self.prefix_cache.tokens_reused,
            "prefix_cache_bytes": self.prefix_cache.n_blocks * self._block_bytes,
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
        """One forward: the running decodes, then prefill chunks, within max_num_batched_tokens (module doc)."""
        self.steps += 1
        self._drop_cancelled()
        if self._pool is None:  # with the compiled step, one more block: the padding rows' scratch
            n_blocks = self._n_blocks + (1 if self._compile else 0)
            self._pool = PagedKVPool.for_model(self.model, n_blocks, self.config.kv_block_size)
            self.prefix_cache.attach(self._pool)
            if self._compile:
                from pixtral.engine.compiled import compiled_decode

                self._decode_step = compiled_decode(self.model, self._pool.reserve())
        budget = self.config.max_num_batched_tokens
        rows: list[tuple[Request, int]] = []  # (request, new tokens this step)
        scheduled: set[int] = set()
        for request in [r for r in self._running if r.leader is None and len(r.tokens) - r.computed == 1]:
            if budget == 0:
                break
            if request not in self._running:  # preempted to make room for an earlier row
                continue
            if self._grow(request, request.computed + 1, scheduled):
                rows.append((request, 1))
                scheduled.add(id(request))
                budget -= 1
        for request in [r for r in self._running if r.leader is None and len(r.tokens) - r.computed > 1]:
            if budget == 0:
                break
            if request not in self._running:  # preempted to make room for an earlier prefill
                continue
            n = self._fit(request, min(len(request.tokens) - request.computed, budget))
            while not n and self._preempt_later(request, scheduled):  # no block free: the later admitted go
                n = self._fit(request, min(len(request.tokens) - request.computed, budget))
            if n:
                rows.append((request, n))
                scheduled.add(id(request))
                budget -= n
        while budget and self._waiting and len(self._running) < self.config.max_num_seqs:
            request = self._admit_next()
            if request is None:
                break
            n = (
                self._fit(request, min(len(request.tokens) - request.computed, budget))
                if request.leader is None
                else 0
            )
            if n:
                rows.append((request, n))
                scheduled.add(id(request))
                budget -= n
        if rows:
            self._run(rows)

    def _grow(self, request: Request, n_positions: int, scheduled: set[int]) -> bool:
        """Blocks for n_positions of `request`, preempting the most recently admitted requests not in this
        step until they fit; False when `request` itself had to go (it is then back in the waiting queue)."""
        while not self._pool.grow(request.blocks, n_positions):
            victims = [r for r in self._running if r.blocks and id(r) not in scheduled and r is not request]
            victim = victims[-1] if victims else request
            self._preempt(victim)
            if victim is request:
                return False
        return True

    def _preempt_later(self, request: Request, scheduled: set[int]) -> bool:
        """Preempt the latest request admitted after `request` that holds blocks and is not in this step (so
        two prefills that each hold part of the pool cannot wait for each other forever); False if none."""
        later = self._running[self._running.index(request) + 1 :]
        victims = [r for r in later if r.blocks and id(r) not in scheduled]
        if not victims:
            return False
        self._preempt(victims[-1])
        return True

    def _fit(self, request: Request, n: int) -> int:
        """How many of the next n tokens of a prefilling request fit in available blocks (taken for them)."""
        room = (len(request.blocks) + self._pool.n_available) * self._pool.block_size - request.computed
        n = min(n, room)
        if n > 0:
            self._pool.grow(request.blocks, request.computed + n)
        return max(n, 0)

    def _preempt(self, request: Request) -> None:
        """Recompute preemption: release the request's KV blocks (and those of its choices still waiting for its
        prefill) and put it back at the front of the waiting queue; its tokens so far become its prompt."""
        waiting = [f for f in request.followers if f.leader is request and f in self._running]
        for r in (request, *waiting):
            self._pool.release(r.blocks)
            r.computed = 0
            self._running.remove(r)
        request.preempted += 1
        self.preemptions += 1
        with self._work:
            self._waiting.appendleft(request)

    def _drop_cancelled(self) -> None:
        for request in [r for r in self._running if r.cancelled.is_set()]:
            self._finish(request, Finished("cancelled"))
        with self._work:
            for request in [r for r in self._waiting if all(c.cancelled.is_set() for c in (r, *r.followers))]:
                self._waiting.remove(request)
                for choice in (request, *request.followers):
                    choice.events.put(Finished("cancelled"))

    def _admit_next(self) -> Request | None:
        """Start the first waiting request (with its sibling choices) if its tokens fit the free blocks now;
        its images are encoded and a cached prefix reused. None when it must wait for memory."""
        request = self._waiting[0]
        choices = [request, *(f for f in request.followers if f.leader is request)]
        try:
            hit = self._cached_prefix(request)
        except Exception:  # images that do not match the prompt: _prepare_prompt reports it
            hit = []
        # the blocks it needs beside the cached ones, against those available once the cached ones are
        # shared (a cached block no one else holds is evictable, so counted as available, until then)
        need = self._pool.blocks_for(len(request.tokens)) - len(hit)
        pinned = sum(1 for block in hit if self._pool.refs(block) == 1)
        if need > self._pool.n_available - pinned and self._running:
            return None  # waits for memory to free up (alone, it always fits: checked at submission)
        with self._work:
            self._waiting.popleft()
        try:
            for choice in choices:
                if choice.generator is None and not choice.params.greedy:
                    choice.generator = seeded_generator(choice.params.seed, self.model.device)
            self._prepare_prompt(request, hit)
        except Exception as e:
            for choice in choices:
                self._pool.release(choice.blocks)
                choice.events.put(Finished("error", e))
            return self._admit_next() if self._waiting else None
        self._running += choices
        return request

    def _cached_prefix(self, request: Request) -> list[int]:
        """The pool blocks of the longest cached prefix of the request's prompt (keys made once)."""
        if request.prefix_keys is None:
            if len(request.image_hashes) != len(request.images):
                request.image_hashes = [image_hash(im) for im in request.images]
            request.prefix_keys = block_keys(
                request.prompt_ids, request.image_hashes, self.model.config.vision, self.prefix_cache.block
            )
        # Reuse at most len - 1 tokens: the last token must run to give the first logits.
        return self.prefix_cache.find(
            request.prefix_keys, min(len(request.prompt_ids), len(request.tokens) - 1)
        )

    def _prepare_prompt(self, request: Request, hit: list[int] | None = None) -> None:
        """Encode the images (cached by content) and share the blocks of a cached prompt prefix (`hit`, when
        the caller looked it up)."""
        device = self.model.device
        if len(request.image_hashes) != len(request.images):
            request.image_hashes = [image_hash(im) for im in request.images]
        features = []
        for pixels, key in zip(request.images, request.image_hashes, strict=True):
            cached = self.image_cache.get(key)
            if cached is None:  # one image per call: exact reuse
                cached = self.model.encode_images([torch.from_numpy(pixels).to(device)])
                self.image_cache.put(key, cached)
            features.append(cached)
        request.features = torch.cat(features) if features else None
        image_id = self.model.config.vision.image_token_id
        n_slots = sum(1 for t in request.prompt_ids if t == image_id)
        n_features = 0 if request.features is None else request.features.shape[0]
        if n_slots != n_features:
            raise ImageTokenMismatch(
                f"the prompt has {n_slots} [IMG] tokens but the images give {n_features} patch features"
            )
        if hit is None:
            hit = self._cached_prefix(request)
        self.prefix_cache.count(hit)
        if hit and not request.blocks:
            self._pool.share(request.blocks, hit)  # read only: its new tokens go to blocks after these
            request.computed = len(hit) * self._pool.block_size

    def _run(self, rows: list[tuple[Request, int]]) -> None:
        """One packed forward over `rows`, then the sampling of the rows whose chunk ends their tokens. A
        forward that raises is rerun row by row, so only the culprit fails (a failed forward leaves every
        request's computed length unchanged; what it wrote to the pool is rewritten)."""
        rows.sort(key=lambda row: row[1] > 1)  # the one-token rows first (PagedBatch)
        try:
            logits = self._forward(rows)
        except Exception as e:
            if len(rows) == 1:
                self._finish(rows[0][0], Finished("error", e))
                return
            for row in rows:
                if row[0] in self._running:
                    self._run([row])
            return
        sampling: list[Request] = []
        index: list[int] = []  # the row of `logits` each sampling request draws from
        n_decode = 0
        k = -1
        for request, n in rows:
            was_prompt = request.computed < len(request.prompt_ids)
            if n == 1 and request.generated > 0 and request.computed == len(request.tokens) - 1:
                n_decode += 1
            else:
                self.prefill_tokens += n
            request.computed += n
            if request.computed < len(request.tokens):
                continue  # a prefill chunk that samples nothing
            k += 1
            if was_prompt and not request.preempted:
                self._store_prefix(request)
            row = k
            sampling.append(request)
            index.append(row)
            for follower in request.followers:
                if follower in self._running and follower.leader is request:
                    follower.leader = None
                    if self._share_prompt(request, follower):
                        sampling.append(follower)
                        index.append(row)
                    else:  # no room for its own last block now: it prefills on its own
                        self._prepare_follower(follower)
        self.last_step = (n_decode, sum(n for _, n in rows) - n_decode)
        if sampling:
            self._emit(sampling, logits[0, index])

    def _forward(self, rows: list[tuple[Request, int]]) -> torch.Tensor:
        """The packed forward of a step: logits (1, K, vocab) of the rows whose chunk ends their tokens."""
        device = self.model.device
        image_id = self.model.config.vision.image_token_id
        ids: list[int] = []
        is_image: list[bool] = []
        features = []
        logits_at: list[int] = []
        for request, n in rows:
            start, end = request.computed, request.computed + n
            chunk = request.tokens[start:end]
            ids += chunk
            n_prompt = len(request.prompt_ids)
            # image positions: [IMG] ids of the original prompt only (a generated [IMG] is a plain token)
            is_image += [t == image_id and p < n_prompt for p, t in enumerate(chunk, start)]
            if request.features is not None and start < n_prompt:  # counted on the host: no device sync
                before = sum(1 for t in request.prompt_ids[:start] if t == image_id)
                inside = sum(1 for t in request.prompt_ids[start : min(end, n_prompt)] if t == image_id)
                if inside:
                    features.append(request.features[before : before + inside])
            if end == len(request.tokens):
                logits_at.append(len(ids) - 1)
        batch = PagedBatch.build(self._pool, [(r.blocks, r.computed, n) for r, n in rows])
        token_ids = torch.tensor([ids], device=device)  # (1, N)
        mask = torch.tensor([is_image], device=device)  # (1, N)
        index = torch.tensor(logits_at, dtype=torch.long, device=device)  # (K,)
        if not features and self._decode_step is not None and all(n == 1 for _, n in rows):
            try:
                return self._decode_step(token_ids, batch, index)
            except Exception as e:  # a compiler that fails here must not fail the requests: eager from now on
                log.warning("the compiled decode step failed (%s); decoding eagerly from now on", e)
                self._decode_step = None
        return self.model(
            token_ids,
            image_features=torch.cat(features) if features else None,
            image_mask=mask,
            caches=batch,
            logits_index=index,
        )

    def _share_prompt(self, leader: Request, follower: Request) -> bool:
        """Another choice starts from the leader's prefilled prompt: it shares the full blocks and gets its own
        copy of the partly written last one (copy on write: both write their next tokens there); False when
        no block is available for that copy (nothing taken)."""
        bs = self._pool.block_size
        full, partial = divmod(leader.computed, bs)
        if partial and not self._pool.n_available:
            return False
        self._pool.share(follower.blocks, leader.blocks[:full])
        if partial:
            self._pool.grow(follower.blocks, leader.computed)
            self._pool.copy_blocks([leader.blocks[full]], [follower.blocks[full]])
        follower.computed = leader.computed
        return True

    def _store_prefix(self, request: Request) -> None:
        """The full blocks of a prefilled prompt go to the prefix cache (shared, not copied)."""
        full_blocks = len(request.prompt_ids) // self.prefix_cache.block
        if not full_blocks or self.prefix_cache.capacity == 0 or request.prefix_keys is None:
            return
        self.prefix_cache.store(request.prefix_keys[:full_blocks], request.blocks[:full_blocks])

    def _prepare_follower(self, follower: Request) -> None:
        try:
            self._prepare_prompt(follower)
        except Exception as e:
            self._finish(follower, Finished("error", e))

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
        request.tokens.append(token)
        if token in request.stop_ids:
            self._finish(request, Finished("stop"))
            return
        request.events.put(token)
        if request.generated >= request.params.max_tokens:
            self._finish(request, Finished("length"))

    def _finish(self, request: Request, outcome: Finished) -> None:
        if request in self._running:
            self._running.remove(request)
        if self._pool is not None:
            self._pool.release(request.blocks)  # the blocks are free for the next request
        request.features = None
        for follower in request.followers:  # still waiting for this prefill: each prefills on its own
            if follower.leader is request:
                follower.leader = None
                if follower in self._running:
                    self._prepare_follower(follower)
        self.finished_requests += 1
        request.events.put(outcome)


def _close_at_exit(ref: weakref.ref[Scheduler]) -> None:
    scheduler = ref()
    if scheduler is not None:
        scheduler.close(timeout_s=10.0)
