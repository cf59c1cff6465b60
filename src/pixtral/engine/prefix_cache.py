"""KV of shared prompt prefixes, reused across requests (multi-turn chats, a common system prompt).

Prompts are cut into blocks of `block` tokens, and block i's key chains the previous key, the block's token
ids and the content hashes of every image whose tokens appear in the block. Two prompts whose image
placeholders are identical token for token but whose images differ therefore never share a key. A key names
one block of the paged KV pool (model/kv_cache.py), which the cache shares with requests instead of copying.
"""

from __future__ import annotations

import hashlib

from pixtral.config import VisionConfig
from pixtral.model.kv_cache import PagedKVPool


def block_keys(
    token_ids: list[int], image_hashes: list[str], vision: VisionConfig, block: int
) -> list[bytes]:
    """Key of each full block of the prompt: keys[i] identifies token_ids[: (i + 1) * block] and its images."""
    image_tokens = {vision.image_token_id, vision.image_break_token_id, vision.image_end_token_id}
    keys, previous, image = [], b"", 0
    for start in range(0, len(token_ids) - block + 1, block):
        h = hashlib.sha256(previous)
        touched = []
        for token in token_ids[start : start + block]:
            h.update(token.to_bytes(4, "little"))
            if token in image_tokens:
                if image >= len(image_hashes):
                    raise ValueError("more image blocks in the prompt than images")
                if not touched or touched[-1] != image:
                    touched.append(image)
                if token == vision.image_end_token_id:
                    image += 1
        for i in touched:
            h.update(image_hashes[i].encode())
        previous = h.digest()
        keys.append(previous)
    return keys


class PrefixCache:
    """Full prompt blocks of the KV pool, found again by their keys: the cache holds one reference to each
    block it keeps (`PagedKVPool.cache_block`), so a hit shares the blocks with the new request (no copy) and
    a store copies nothing either. Its capacity is in blocks of the pool; besides, the pool takes back (and
    the cache forgets, `_forget`) any cached block no request holds as soon as it has no free block left,
    least recently used first, so a full cache never makes a request wait or be preempted."""

    def __init__(self, capacity_blocks: int, block: int) -> None:
        self.capacity = capacity_blocks
        self.block = block  # tokens per key: the pool's block size
        self.pool: PagedKVPool | None = None
        self._blocks: dict[bytes, int] = {}  # block key -> pool block
        self._keys: dict[int, bytes] = {}  # pool block -> block key
        self.hits = 0
        self.misses = 0
        self.tokens_reused = 0

    def attach(self, pool: PagedKVPool) -> None:
        """Cache blocks of `pool` (once, when the scheduler makes it)."""
        if pool.block_size != self.block:
            raise ValueError(f"prefix cache blocks of {self.block} tokens over a pool of {pool.block_size}")
        self.pool = pool
        pool.on_evict = self._forget

    def find(self, keys: list[bytes], max_tokens: int) -> list[int]:
        """The pool blocks of the longest cached prefix of at most max_tokens tokens ([] when none)."""
        found: list[int] = []
        for key in keys[: max_tokens // self.block]:
            block = self._blocks.get(key)
            if block is None:
                break
            found.append(block)
        return found

    def count(self, hit: list[int]) -> None:
        """Count a lookup whose result (find's) is used."""
        if hit:
            self.hits += 1
            self.tokens_reused += len(hit) * self.block
        else:
            self.misses += 1

    def store(self, keys: list[bytes], blocks: list[int]) -> None:
        """Keep blocks[i] (full and written: read only from now on) as the prefix keys[: i + 1] names, for
        each key not cached yet, one reference each; stops where the capacity is reached and nothing can be
        evicted."""
        if self.pool is None:
            return
        for key, block in zip(keys, blocks, strict=False):
            if key in self._blocks or block in self._keys:
                continue
            if len(self._keys) >= self.capacity and not self.pool.evict(1):
                return
            self.pool.cache_block(block)
            self._blocks[key] = block
            self._keys[block] = key

    def clear(self) -> None:
        """Drop every cached block's reference."""
        for block in list(self._keys):
            self.pool.uncache_block(block)
            self._forget(block)

    def _forget(self, block: int) -> None:
        del self._blocks[self._keys.pop(block)]

    @property
    def n_blocks(self) -> int:
        return len(self._keys)
