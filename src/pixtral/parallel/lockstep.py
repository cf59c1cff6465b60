"""Rank 0 drives, the other ranks follow: one forward of the sharded model runs on every rank at once.

`TensorParallelModel` (rank 0) looks like a `Pixtral` to the engine and its scheduler, which stay unaware of
tensor parallelism: its forward first broadcasts the step's inputs (token ids, image features, masks,
positions) and a description of the KV caches the step continues, then runs rank 0's shard, whose
collectives the other ranks meet in `follow`, running the same forward on their shards with KV caches of
their own heads. Images are encoded on rank 0 only (it alone holds the vision encoder); their features
travel with the inputs.

The KV caches are the scheduler's (rank 0's); each other rank mirrors them (`KVMirror`) from the description
sent with every forward: each cache has an id; the message names the step's rows and their lengths, every
live cache with its KV-pool slot (a freed slot takes the pool's last sequence, so a follower moves its own
data the same way) and the caches whose contents the scheduler copied rather than computed (the n choices
of one prompt start from a copy of the first one's prefill): rank 0 finds a copy's source by comparing its
keys at the last copied position with a fingerprint kept per cache after each forward. The prefix cache
stores copies of rank 0's keys only: under tensor parallelism the engine turns it off.

A step that stops half-way would leave the ranks waiting at different collectives, so rank 0 raises the
model's input errors (the [IMG] count, a full KV cache) before it sends anything, and any other failure
inside a step ends the group: a follower exits with its error, rank 0 raises `TensorParallelError` (as it
does when a rank is lost: its process died, its connection closed), never waits forever.
"""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from pixtral.errors import PixtralError
from pixtral.model.kv_cache import KVPool, SequenceKVCache
from pixtral.model.pixtral import ImageTokenMismatch, Pixtral

log = logging.getLogger(__name__)


class TensorParallelError(PixtralError):
    """A rank of the tensor-parallel group is gone (or the group failed): the model cannot run."""


def _send(message: object) -> None:
    dist.broadcast_object_list([message], src=0)


def _receive() -> object:
    box = [None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().cpu()


class TensorParallelModel(nn.Module):
    """Rank 0's face of the sharded model: config, dtype, device, encode_images and forward as `Pixtral`."""

    def __init__(self, shard: Pixtral, size: int, on_close: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.shard, self.size, self._on_close = shard, size, on_close
        self._ids: weakref.WeakKeyDictionary[SequenceKVCache, int] = weakref.WeakKeyDictionary()
        self._new_id = itertools.count()
        self._pools: weakref.WeakKeyDictionary[KVPool, int] = weakref.WeakKeyDictionary()
        self._synced: dict[int, int] = {}  # cache id -> positions the other ranks hold
        self._prints: dict[int, tuple[int, torch.Tensor, torch.Tensor]] = {}  # id -> (length, k, v) there
        self._lock = threading.Lock()  # one message at a time (the scheduler's thread, close, keep-alive)
        self.failed: str | None = None
        self.closed = False

    @property
    def config(self):
        return self.shard.config

    @config.setter
    def config(self, value) -> None:
        self.shard.config = value

    @property
    def dtype(self) -> torch.dtype:
        return self.shard.dtype

    @property
    def device(self) -> torch.device:
        return self.shard.device

    def encode_images(self, images: list[torch.Tensor]) -> torch.Tensor:
        return self.shard.encode_images(images)

    def forward(
        self,
        token_ids: torch.Tensor,
        images: list[torch.Tensor] | None = None,
        *,
        image_features: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        caches: list[SequenceKVCache] | None = None,
        last_only: bool = False,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """As Pixtral.forward; the other ranks run the same step."""
        if images:
            if image_features is not None:
                raise ValueError("pass images or image_features, not both")
            image_features = self.encode_images(images)
        inputs = {
            "token_ids": _cpu(token_ids),
            "image_features": _cpu(image_features),
            "image_mask": _cpu(image_mask),
            "last_only": last_only,
            "positions": _cpu(positions),
            "mask": _cpu(mask),
        }
        with self._lock:
            self._check()
            self._refuse_bad_inputs(token_ids, image_features, image_mask, caches)
            kv = self._describe(caches) if caches else None
            try:
                _send(("forward", inputs, kv))
                return self.shard(
                    token_ids,
                    image_features=image_features,
                    image_mask=image_mask,
                    caches=caches,
                    last_only=last_only,
                    positions=positions,
                    mask=mask,
                )
            except Exception as e:
                # past the broadcast, a step that stops half-way leaves the ranks at different collectives
                what = (
                    "a tensor-parallel rank is gone or the process group failed"
                    if _is_comm_error(e)
                    else ("a step failed half-way on rank 0, so the ranks are out of step")
                )
                self.failed = f"{what} ({type(e).__name__}: {e})"
                raise TensorParallelError(self.failed) from e
            finally:
                if caches:
                    self._after(caches)

    def _refuse_bad_inputs(self, token_ids, image_features, image_mask, caches) -> None:
        """The model's own input errors, raised here before any rank starts the step (raised half-way, they
        would leave the ranks out of step): the [IMG] count and the KV caches' room."""
        if image_features is not None or image_mask is None:
            is_image = token_ids == self.config.vision.image_token_id if image_mask is None else image_mask
            n_slots, n_features = (
                int(is_image.sum()),
                0 if image_features is None else image_features.shape[0],
            )
            if n_slots != n_features:
                raise ImageTokenMismatch(
                    f"the prompt has {n_slots} [IMG] tokens but the images give {n_features} patch features"
                )
        for cache in caches or ():
            if cache.length + token_ids.shape[1] > cache.max_len:
                raise ValueError(
                    f"KV cache holds {cache.max_len} positions; asked to write up to {cache.length + token_ids.shape[1]}"
                )

    def _check(self) -> None:
        if self.failed:
            raise TensorParallelError(self.failed)
        if self.closed:
            raise TensorParallelError("the tensor-parallel group is closed")

    def _describe(self, caches: list[SequenceKVCache]) -> dict:
        """What the other ranks need to mirror the step's KV caches (see the module docstring)."""
        rows, copies = [], []
        for cache in caches:
            cid = self._ids.get(cache)
            if cid is None:
                cid = self._ids[cache] = next(self._new_id)
            if self._synced.get(cid, 0) != cache.length:  # written outside the model: a copy
                copies.append((cid, self._copy_source(cache, cid), cache.length))
            rows.append(cid)
        live = {cid: (c.slot if c.pool is not None else -1, c.max_len) for c, cid in self._ids.items()}
        pooled = next((c.pool for c in self._ids if c.pool is not None), None)
        pool = None
        if pooled is not None:
            if pooled not in self._pools:
                self._pools[pooled] = next(self._new_id)
            pool = (self._pools[pooled], pooled.n_used + pooled.n_free, pooled.slot_len, pooled.n_used)
        for cid in [cid for cid in self._synced if cid not in live]:  # freed caches
            del self._synced[cid]
        return {
            "rows": rows,
            "lengths": [c.length for c in caches],
            "live": live,
            "pool": pool,
            "copies": copies,
        }

    def _copy_source(self, cache: SequenceKVCache, cid: int) -> int:
        n = cache.length
        for src, (length, k, v) in self._prints.items():
            if (
                src != cid
                and length == n
                and torch.equal(cache.k[:, n - 1], k)
                and torch.equal(cache.v[:, n - 1], v)
            ):
                return src
        raise TensorParallelError(
            f"a KV cache holds {n} positions that no forward wrote and that copy no known cache (a prefix-cache "
            "hit?): under tensor parallelism the other ranks cannot follow; turn the prefix cache off"
        )

    def _after(self, caches: list[SequenceKVCache]) -> None:
        live = set(self._ids.values())
        self._prints = {cid: p for cid, p in self._prints.items() if cid in live}  # the dead were resolved
        for cache in caches:
            cid, n = self._ids[cache], cache.length
            self._synced[cid] = n
            if n:
                self._prints[cid] = (n, cache.k[:, n - 1].clone(), cache.v[:, n - 1].clone())

    def keep_alive(self) -> None:
        """A message that does nothing: keeps an idle group's connections within their timeout."""
        with self._lock:
            if not (self.failed or self.closed):
                _send(("ping", None, None))

    def close(self) -> None:
        """Tell the other ranks to stop (they return from `follow`), then let the launcher end the group."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if not self.failed:
                try:
                    _send(("stop", None, None))
                except RuntimeError as e:
                    log.warning("tensor parallel: could not stop the other ranks: %s", e)
        if self._on_close is not None:
            self._on_close()


def _is_comm_error(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return isinstance(e, dist.DistBackendError) or any(
        s in text for s in ("gloo", "nccl", "connection", "timed out", "timeout", "broken pipe", "peer")
    )


class KVMirror:
    """A follower's copies of rank 0's KV caches, for its own heads, kept in step by `sync`."""

    def __init__(self, model: Pixtral) -> None:
        self.model = model
        self.caches: dict[int, SequenceKVCache] = {}
        self.pool: KVPool | None = None
        self.pool_id = -1

    def sync(self, kv: dict) -> list[SequenceKVCache]:
        """Apply rank 0's description; return the step's caches in row order."""
        # copy sources first, as they are now (a move or a new cache may overwrite their slot below)
        sources = {src: self.caches[src] for _, src, _ in kv["copies"]}
        copied = {
            dst: (sources[src].k[:, :n].clone(), sources[src].v[:, :n].clone())
            for dst, src, n in kv["copies"]
        }
        if kv["pool"] is not None and kv["pool"][0] != self.pool_id:  # rank 0 made a new pool
            self.pool_id, n_slots, slot_len, _ = kv["pool"]
            self.pool = KVPool.for_model(self.model, n_slots, slot_len)
        live = kv["live"]
        moves = [
            (cache, live[cid][0])
            for cid, cache in self.caches.items()
            if cid in live and cache.pool is not None and cache.slot != live[cid][0]
        ]
        data = [
            (cache.k[:, : cache.length].clone(), cache.v[:, : cache.length].clone()) for cache, _ in moves
        ]
        for (cache, slot), (k, v) in zip(moves, data, strict=True):
            cache.k, cache.v, cache.slot = self.pool.k[:, slot], self.pool.v[:, slot], slot
            cache.k[:, : k.shape[1]] = k
            cache.v[:, : v.shape[1]] = v
        for cid in [cid for cid in self.caches if cid not in live]:
            del self.caches[cid]
        for cid, (slot, max_len) in live.items():
            if cid not in self.caches:
                if slot >= 0:
                    self.caches[cid] = SequenceKVCache.in_pool(self.pool, slot)
                else:
                    self.caches[cid] = SequenceKVCache.for_model(self.model, max_len)
        if self.pool is not None:
            self.pool.n_used = kv["pool"][3] if kv["pool"] else 0
            self.pool.clean_below(self.pool.n_used)  # as rank 0's allocate() did
        for dst, (k, v) in copied.items():
            self.caches[dst].copy_prefix_from(k, v)
        rows = [self.caches[cid] for cid in kv["rows"]]
        for cache, n in zip(rows, kv["lengths"], strict=True):
            cache.length = n
        return rows


@torch.inference_mode()
def follow(model: Pixtral) -> None:
    """A follower rank's loop: run every forward rank 0 announces, until it says stop. A failure to follow
    (not an exception of the model's, which rank 0 meets too) ends the process's part: it raises."""
    mirror = KVMirror(model)
    device = model.device
    while True:
        command, inputs, kv = _receive()
        if command == "stop":
            return
        if command != "forward":
            continue
        caches = mirror.sync(kv) if kv is not None else None
        args = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
        model(args.pop("token_ids"), caches=caches, **args)  # an error here ends this rank (see forward)
