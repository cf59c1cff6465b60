"""Rank 0 drives, the other ranks follow: one forward of the sharded model runs on every rank at once.

`TensorParallelModel` (rank 0) looks like a `Pixtral` to the engine and its scheduler, which stay unaware of
tensor parallelism: its forward first broadcasts the step's inputs (token ids, image features, masks,
positions, which positions need logits) and a description of the KV caches the step continues, then runs rank
0's shard, whose collectives the other ranks meet in `follow`, running the same forward on their shards with
KV caches of their own heads. Images are encoded on rank 0 only (it alone holds the vision encoder); their
features travel with the inputs.

The KV caches are the scheduler's (rank 0's); each other rank keeps its own copy for its heads (`KVMirror`):
- the paged pool (the scheduler's, model/kv_cache.py): every rank has a pool of the same blocks, so a step's
  block tables (`PagedBatch.rows`) mean the same positions on every rank and are all a follower needs to
  build the same batch. What the scheduler writes into the pool outside a forward is logged by the pool
  (`outside_copies`) and travels with the next step: block copies (another choice of a prompt copies the
  partly written last block of the first one's prefill) are replayed. Shared blocks (a prefix-cache hit, the
  full prompt blocks of the n choices) need nothing: a block id names the same positions on every rank, and
  a block held by a table or the prefix cache is never handed out again, so every rank still holds what the
  forward that wrote it wrote there.
- per-sequence caches (`SequenceKVCache`, the reference generation loop): mirrored by id and length.

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
from pixtral.model.kv_cache import PagedBatch, PagedKVPool, SequenceKVCache
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
        self._pools: weakref.WeakKeyDictionary[PagedKVPool, int] = weakref.WeakKeyDictionary()
        self._new_id = itertools.count()
        self._synced: dict[int, int] = {}  # per-sequence cache id -> positions the other ranks hold
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
        caches: list[SequenceKVCache] | PagedBatch | None = None,
        last_only: bool = False,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        logits_index: torch.Tensor | None = None,
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
            "logits_index": _cpu(logits_index),
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
                    logits_index=logits_index,
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
                if caches and not isinstance(caches, PagedBatch):
                    for cache in caches:
                        self._synced[self._ids[cache]] = cache.length

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
        for cache in [] if isinstance(caches, PagedBatch) else caches or ():  # pool blocks: granted before
            if cache.length + token_ids.shape[1] > cache.max_len:
                raise ValueError(
                    f"KV cache holds {cache.max_len} positions; asked to write up to {cache.length + token_ids.shape[1]}"
                )

    def _check(self) -> None:
        if self.failed:
            raise TensorParallelError(self.failed)
        if self.closed:
            raise TensorParallelError("the tensor-parallel group is closed")

    def _describe(self, caches: list[SequenceKVCache] | PagedBatch) -> dict:
        """What the other ranks need to continue the step's KV caches (see the module docstring)."""
        if isinstance(caches, PagedBatch):
            pool = caches.pool
            if pool not in self._pools:
                self._pools[pool] = next(self._new_id)
                pool.outside_copies = []
            copies, pool.outside_copies = pool.outside_copies, []
            return {
                "pool": (self._pools[pool], pool.n_blocks, pool.block_size),
                "rows": caches.rows,
                "copies": copies,
            }
        rows = []
        for cache in caches:
            cid = self._ids.get(cache)
            if cid is None:
                cid = self._ids[cache] = next(self._new_id)
            if self._synced.get(cid, 0) != cache.length:
                raise TensorParallelError(
                    f"a KV cache holds {cache.length} positions that no forward wrote: under tensor "
                    "parallelism the other ranks cannot follow a cache filled outside the model"
                )
            rows.append((cid, cache.length, cache.max_len))
        live = set(self._ids.values())
        self._synced = {cid: n for cid, n in self._synced.items() if cid in live}  # freed caches
        return {"own": rows, "live": sorted(live)}

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
    """A follower's KV caches for its own heads, kept in step with rank 0's by `sync`."""

    def __init__(self, model: Pixtral) -> None:
        self.model = model
        self.caches: dict[int, SequenceKVCache] = {}
        self.pool: PagedKVPool | None = None
        self.pool_id = -1
        self.zeroed: set[int] = set()  # blocks of the pool written or zeroed at least once

    def sync(self, kv: dict) -> list[SequenceKVCache] | PagedBatch:
        """Apply rank 0's description; return what the step's forward takes as `caches`."""
        if "pool" in kv:
            pool_id, n_blocks, block_size = kv["pool"]
            if pool_id != self.pool_id:  # rank 0 made a new pool
                self.pool_id, self.pool = pool_id, PagedKVPool.for_model(self.model, n_blocks, block_size)
                self.zeroed = set()
            for source, target in kv["copies"]:
                self.pool.copy_blocks(source, target)
                self.zeroed.update(target)  # whole blocks written
            # masked positions must hold finite values: a block is zeroed when first used (memory charged as
            # it fills, as on rank 0); a block used again holds a finished sequence's finite values
            fresh = sorted({b for blocks, _, _ in kv["rows"] for b in blocks} - self.zeroed)
            if fresh:
                self.pool.zero_blocks(fresh)
                self.zeroed.update(fresh)
            return PagedBatch.build(self.pool, kv["rows"])
        self.caches = {cid: c for cid, c in self.caches.items() if cid in set(kv["live"])}
        rows = []
        for cid, length, max_len in kv["own"]:
            if cid not in self.caches:
                self.caches[cid] = SequenceKVCache.for_model(self.model, max_len)
            cache = self.caches[cid]
            cache.length = length
            rows.append(cache)
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
