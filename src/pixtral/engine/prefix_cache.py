"""KV of shared prompt prefixes, reused across requests (multi-turn chats, a common system prompt).

Prompts are cut into blocks of `block` tokens, and block i's key chains the previous key, the block's token
ids and the content hashes of every image whose tokens appear in the block. Two prompts whose image
placeholders are identical token for token but whose images differ therefore never share a key.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from pixtral.config import VisionConfig


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


@dataclass
class _Entry:
    k: torch.Tensor  # (n_layers, n_tokens, n_kv, hd)
    v: torch.Tensor
    keys: list[bytes]

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


class PrefixCache:
    def __init__(self, capacity_bytes: int, block: int = 32) -> None:
        self.capacity = capacity_bytes
        self.block = block
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._index: dict[bytes, tuple[int, int]] = {}  # block key -> (entry id, n tokens)
        self._ids = itertools.count()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.tokens_reused = 0

    def lookup(self, keys: list[bytes], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The longest cached prefix of at most max_tokens tokens: (k, v) views, or None."""
        with self._lock:
            for i in range(min(len(keys), max_tokens // self.block) - 1, -1, -1):
                hit = self._index.get(keys[i])
                if hit is not None:
                    entry_id, n = hit
                    entry = self._entries[entry_id]
                    self._entries.move_to_end(entry_id)
                    self.hits += 1
                    self.tokens_reused += n
                    return entry.k[:, :n], entry.v[:, :n]
            self.misses += 1
            return None

    def has(self, key: bytes) -> bool:
        """Whether the prefix that `key` identifies is stored."""
        with self._lock:
            return key in self._index

    def store(self, keys: list[bytes], k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep k, v (n_layers, n, ...) for the prefix of len(keys) full blocks (copied)."""
        n = len(keys) * self.block
        if n == 0 or keys[-1] in self._index:
            return
        entry = _Entry(k[:, :n].clone(), v[:, :n].clone(), keys)
        if entry.nbytes > self.capacity:
            return
        with self._lock:
            entry_id = next(self._ids)
            self._entries[entry_id] = entry
            self._bytes += entry.nbytes
            for i, key in enumerate(keys):
                current = self._index.get(key)
                if current is None or current[1] < (i + 1) * self.block:
                    self._index[key] = (entry_id, (i + 1) * self.block)
            while self._bytes > self.capacity:
                old_id, old = self._entries.popitem(last=False)
                self._bytes -= old.nbytes
                for key in old.keys:
                    if self._index.get(key, (None,))[0] == old_id:
                        del self._index[key]

    @property
    def nbytes(self) -> int:
        return self._bytes
