"""Packing: many short examples in one row, with no attention and no loss across their borders.

Examples are assigned to bins of `capacity` tokens by best-fit-decreasing (longest first, each into
the fullest bin it still fits), which leaves little room unused. A packed micro-batch is one row
holding its bins back to back: no padding at all. `position_ids` restart at 0 for every example,
which is how the attention kernels (flash varlen, transformers' packed-sequence masks, and tuna's
per-document attention) learn where one example ends; the first token of every example carries no
label, so no example is trained to predict the next one's start.
"""
from __future__ import annotations

import bisect

import torch

from tuna.data.render import IGNORE, Rendered


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of indices into `lengths`, each summing to at most `capacity`; longest items placed first."""
    if lengths and max(lengths) > capacity:
        raise ValueError(f"an item of {max(lengths)} tokens does not fit a bin of {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin number), kept sorted
    for i in order:
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at == len(free):
            bins.append([i])
            room, number = capacity - lengths[i], len(bins) - 1
        else:
            room, number = free.pop(at)
            bins[number].append(i)
            room -= lengths[i]
        bisect.insort(free, (room, number))
    return bins


def collate_packed(items: list[Rendered], weights: list[list[float]]) -> dict[str, torch.Tensor]:
    """One row of all `items` back to back, with per-example position ids and no attention mask.

    `weights[k]` holds example k's loss weight at each position (see `batch.target_weights`).
    """
    input_ids, labels, positions, row_weights = [], [], [], []
    for item, item_weights in zip(items, weights):
        input_ids += item.input_ids
        labels += [IGNORE] + item.labels[1:]
        positions += range(len(item.input_ids))
        row_weights += item_weights
    return {"input_ids": torch.tensor([input_ids]), "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions]), "weights": torch.tensor([row_weights], dtype=torch.float32)}
