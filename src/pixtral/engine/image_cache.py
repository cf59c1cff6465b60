"""Encoded image features keyed by pixel content: a repeated image (multi-turn chat, the same image in many
requests) is run through the vision encoder once."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np
import torch


def image_hash(pixels: np.ndarray) -> str:
    """Content hash of a preprocessed image: its shape and float32 pixel bytes."""
    h = hashlib.sha256(str(pixels.shape).encode())
    h.update(np.ascontiguousarray(pixels, dtype=np.float32).tobytes())
    return h.hexdigest()


class ImageFeatureCache:
    """LRU cache of (n_patches, dim) feature tensors, bounded in bytes."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: str, features: torch.Tensor) -> None:
        size = features.numel() * features.element_size()
        if size > self.capacity:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = features
            self._bytes += size
            while self._bytes > self.capacity:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.numel() * old.element_size()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)
