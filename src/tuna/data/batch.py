"""Padded micro-batches in a seeded, resumable order.

The order of epoch e is a permutation drawn from a generator seeded with (seed, e), so the data
position is just (epoch, cursor) and a resumed run sees exactly the batches it would have seen.
"""
from __future__ import annotations

import math

import torch

from tuna.data.render import IGNORE, Rendered


def collate(items: list[Rendered], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors; padding has attention 0 and label -100."""
    width = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        input_ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


class EpochSampler:
    """Yields micro-batches of indices forever, one seeded permutation per epoch."""

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.epoch, self.cursor = 0, 0
        self._order: list[int] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.size / self.batch_size)

    def next_indices(self) -> list[int]:
        if self.cursor >= self.size:
            self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
        if self._order is None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._order = torch.randperm(self.size, generator=generator).tolist()
        indices = self._order[self.cursor : self.cursor + self.batch_size]
        self.cursor += len(indices)
        return indices

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor, self._order = state["epoch"], state["cursor"], None


def eval_batches(items: list[Rendered], batch_size: int, pad_id: int):
    """Fixed-order batches, sorted by length so little compute goes to padding."""
    ordered = sorted(items, key=lambda item: len(item.input_ids))
    for start in range(0, len(ordered), batch_size):
        yield collate(ordered[start : start + batch_size], pad_id)
