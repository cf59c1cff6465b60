"""Rows, the data order, and batches.

A row is what the model sees as one sequence: one sample, or with packing several samples laid end to end,
each with its own positions (restarting at 0) and attention kept within it (a block-causal mask).

The data order is a pure function of (seed, step): epoch e visits the samples in a permutation seeded by
(seed, e) and groups them into rows; the rows of all epochs form one stream, and step s trains on rows
[s * batch_size, (s + 1) * batch_size) of it. Rank r of W takes the r-th contiguous slice of those rows.
So a resumed run needs only the step number, and a 1-rank and a 2-rank run see the same global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pixtral.train.data import ConversationDataset

IGNORE = -100  # label of positions that do not count in the loss


def build_rows(order: list[int], lengths: list[int], seq_len: int, pack: bool) -> list[list[int]]:
    """Group sample indices, in the given order, into rows of at most seq_len tokens (greedy, in order)."""
    if not pack:
        return [[i] for i in order]
    rows: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        if current and used + lengths[i] > seq_len:
            rows.append(current)
            current, used = [], 0
        current.append(i)
        used += lengths[i]
    if current:
        rows.append(current)
    return rows


class RowSchedule:
    """Which rows each step trains on, on each rank."""

    def __init__(self, lengths: list[int], seq_len: int, pack: bool, seed: int, rows_per_step: int) -> None:
        if max(lengths) > seq_len:
            raise ValueError("every sample must fit seq_len (fit_to_context runs first)")
        self.lengths, self.seq_len, self.pack = lengths, seq_len, pack
        self.seed, self.rows_per_step = seed, rows_per_step
        self._epochs: list[list[list[int]]] = []

    def epoch_rows(self, epoch: int) -> list[list[int]]:
        while len(self._epochs) <= epoch:
            e = len(self._epochs)
            order = np.random.default_rng([self.seed, e]).permutation(len(self.lengths)).tolist()
            self._epochs.append(build_rows(order, self.lengths, self.seq_len, self.pack))
        return self._epochs[epoch]

    def step_rows(self, step: int) -> tuple[list[list[int]], float]:
        """The global batch of `step` (0-based) and the epoch (fractional) at its start."""
        start, end = step * self.rows_per_step, (step + 1) * self.rows_per_step
        rows: list[list[int]] = []
        epoch, offset = 0, 0
        position = None
        while offset < end:
            epoch_rows = self.epoch_rows(epoch)
            lo, hi = max(start, offset), min(end, offset + len(epoch_rows))
            if lo < hi:
                if position is None:
                    position = epoch + (lo - offset) / len(epoch_rows)
                rows.extend(epoch_rows[lo - offset : hi - offset])
            offset += len(epoch_rows)
            epoch += 1
        return rows, position or 0.0

    def rank_rows(self, step: int, rank: int, world_size: int) -> list[list[int]]:
        rows, _ = self.step_rows(step)
        per_rank = len(rows) // world_size
        return rows[rank * per_rank : (rank + 1) * per_rank]


@dataclass
class Batch:
    token_ids: torch.Tensor  # (B, T) long, right-padded
    labels: torch.Tensor  # (B, T) long: the next token where it counts in the loss, else IGNORE
    images: list[torch.Tensor]  # (3, H, W) float32, in the order of their [IMG] blocks (row-major)
    positions: torch.Tensor | None  # (B, T) long, restarting per packed sample; None: 0..T-1
    mask: torch.Tensor | None  # (B, 1, T, T) bool, True = attend; None: causal over the row
    n_tokens: int  # real (non-pad) tokens
    n_loss_tokens: int

    def to(self, device: torch.device | str) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(
            move(self.token_ids),
            move(self.labels),
            [im.to(device, non_blocking=True) for im in self.images],
            move(self.positions),
            move(self.mask),
            self.n_tokens,
            self.n_loss_tokens,
        )


def collate(
    rows: list[list[int]], dataset: ConversationDataset, pad_id: int, patch_size: int, packed: bool
) -> Batch:
    """Rows of sample indices -> one right-padded batch. A row of [] is a filler (no loss tokens)."""
    ids_rows, label_rows, pos_rows, spans_rows = [], [], [], []
    images: list[torch.Tensor] = []
    for row in rows:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        spans = []
        for index in row:
            sample = dataset.samples[index]
            n = len(sample)
            spans.append((len(ids), len(ids) + n))
            ids += sample.token_ids
            # label[t] = token t+1 when token t+1 is an assistant token; the last token predicts nothing
            labels += [
                sample.token_ids[t + 1] if sample.loss_mask[t + 1] else IGNORE for t in range(n - 1)
            ] + [IGNORE]
            positions += range(n)
            images += [torch.from_numpy(im) for im in dataset.images(index)]
        if not row:  # filler row: one BOS, nothing to learn
            ids, labels, positions, spans = [dataset.special.bos], [IGNORE], [0], [(0, 1)]
        ids_rows.append(ids)
        label_rows.append(labels)
        pos_rows.append(positions)
        spans_rows.append(spans)

    width = max(len(r) for r in ids_rows)
    b = len(rows)
    token_ids = torch.full((b, width), pad_id, dtype=torch.long)
    labels_t = torch.full((b, width), IGNORE, dtype=torch.long)
    positions_t = torch.zeros((b, width), dtype=torch.long)
    for i in range(b):
        n = len(ids_rows[i])
        token_ids[i, :n] = torch.tensor(ids_rows[i])
        labels_t[i, :n] = torch.tensor(label_rows[i])
        positions_t[i, :n] = torch.tensor(pos_rows[i])

    n_img = int((token_ids == dataset.special.image).sum())
    n_patches = sum((im.shape[1] // patch_size) * (im.shape[2] // patch_size) for im in images)
    if n_img != n_patches:  # impossible by construction (fit_to_context); checked before any compute
        raise RuntimeError(f"batch has {n_img} [IMG] tokens but its images give {n_patches} patches")

    mask = None
    if packed:
        mask = torch.zeros((b, 1, width, width), dtype=torch.bool)
        for i, spans in enumerate(spans_rows):
            for start, end in spans:
                n = end - start
                mask[i, 0, start:end, start:end] = torch.ones(n, n, dtype=torch.bool).tril()
            used = spans[-1][1]
            pad = torch.arange(used, width)
            mask[i, 0, pad, pad] = True  # padding attends to itself only (no fully masked rows)
    return Batch(
        token_ids=token_ids,
        labels=labels_t,
        images=images,
        positions=positions_t if packed else None,
        mask=mask,
        n_tokens=sum(len(ids) for row, ids in zip(rows, ids_rows, strict=True) if row),
        n_loss_tokens=int((labels_t != IGNORE).sum()),
    )
