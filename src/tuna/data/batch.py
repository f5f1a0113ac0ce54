"""Micro-batches in a seeded, resumable order: padded, sorted by length, or packed.

- `padded`: a shuffled order, each micro-batch right-padded to its longest example.
- `sorted` (LongAlign's sorted batching): examples of similar length share a micro-batch, so little
  is padding; the order of the micro-batches is shuffled so lengths do not drift over the epoch.
- `packed`: examples packed into bins of `max_tokens` (see `packing`); a micro-batch is
  `batch_size` bins in one row, with no padding at all (TRL's meaning: `batch_size` rows of `max_tokens`).
- `packed_step` (what `data.batching: auto` becomes for single sequences): one bin per optimizer step, of
  `step_row_tokens` tokens, so a step holds about as many examples as a padded step of `batch_size` ×
  `rows_per_step` did and the number of steps per epoch barely changes. The bin is split into the step's
  `rows_per_step` micro-batches (grad_accum × processes), one row each, balanced by tokens; so trading
  micro_batch_size for grad_accum, or for processes, keeps every step's examples, as with padded batches.
  Only the real tokens are computed.

What an item is, and how a micro-batch of items is collated, is the data kind's (`data.kinds`): an
item of several sequences batches as a unit, and `sorted` orders items by their longest sequence.
Only single sequences are packed.

Epoch e's plan is drawn from a generator seeded with (seed, e), so the data position is just
(epoch, cursor) and a resumed run sees exactly the batches it would have seen.

Every batch carries `weights`: each position's share of the loss. `token` weighting gives every
target token 1; `sequence` weighting gives each example's targets 1/(its target count), so each
example weighs 1 whatever its length (LongAlign's loss weighting). The trainer divides a step's
weighted loss by the step's total weight, so accumulation splits a step without changing it.
"""
from __future__ import annotations

import math

import torch

from tuna.data.packing import best_fit_decreasing, collate_packed
from tuna.data.prompt_variants import choices
from tuna.data.render import IGNORE, Rendered


def target_weights(item: Rendered, weighting: str = "token") -> list[float]:
    """Loss weight per position; position 0 predicts nothing, so it never weighs."""
    targets = [j for j in range(1, len(item.labels)) if item.labels[j] != IGNORE]
    share = 1.0 if weighting == "token" else 1.0 / max(len(targets), 1)
    weights = [0.0] * len(item.labels)
    for j in targets:
        weights[j] = share
    return weights


def collate(items: list[Rendered], pad_id: int, weighting: str = "token") -> dict[str, torch.Tensor]:
    """Right-padded tensors; padding has attention 0, label -100 and weight 0."""
    width = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(items), width), dtype=torch.long)
    weights = torch.zeros((len(items), width), dtype=torch.float32)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        input_ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        attention[row, :n] = 1
        weights[row, :n] = torch.tensor(target_weights(item, weighting))
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention, "weights": weights}


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that are not padding."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def step_row_tokens(lengths: list[int], batch_size: int) -> int:
    """A packed row that holds about `batch_size` examples: `batch_size` × the mean length, never less than the
    longest example (which must fit)."""
    return max(max(lengths), math.ceil(batch_size * sum(lengths) / len(lengths))) if lengths else 1


def split_bin(indices: list[int], lengths: list[int], rows: int) -> list[list[int]]:
    """A step's bin as `rows` micro-batches (fewer if it holds fewer examples), balanced by tokens: longest
    first, each into the lightest row; each row keeps the bin's order."""
    loads = [[0, r, []] for r in range(min(rows, len(indices)))]
    for i in sorted(indices, key=lambda i: -lengths[i]):
        lightest = min(loads)
        lightest[0] += lengths[i]
        lightest[2].append(i)
    return [sorted(row, key=indices.index) for _, _, row in loads]


def epoch_plan(lengths: list[int], batching: str, batch_size: int, bins: list[list[int]] | None,
               generator: torch.Generator, rows_per_step: int = 1) -> list[list[int]]:
    """The micro-batches (lists of example indices) of one epoch."""
    if bins is not None:
        order = torch.randperm(len(bins), generator=generator).tolist()
        if batching == "packed_step":
            return [row for b in order for row in split_bin(bins[b], lengths, rows_per_step)]
        return [[i for b in order[s : s + batch_size] for i in bins[b]] for s in range(0, len(order), batch_size)]
    order = torch.randperm(len(lengths), generator=generator).tolist()
    if batching == "sorted":
        order.sort(key=lambda i: lengths[i])  # stable: equal lengths keep their random order
    chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if batching == "sorted":
        chunks = [chunks[c] for c in torch.randperm(len(chunks), generator=generator).tolist()]
    return chunks


class TrainBatches:
    """The training split as an endless, resumable stream of collated micro-batches of its `kind`
    (`data.kinds`); `packed` applies to kinds whose items are single sequences."""

    def __init__(self, items: list, kind, *, batching: str, batch_size: int, max_tokens: int, weighting: str,
                 pad_id: int, seed: int, versions: list[list] | None = None, rows_per_step: int = 1):
        """`versions[i]`: item i in each of its versions (PAFT), of which each batch draws one per item.
        `rows_per_step`: the micro-batches of one optimizer step (grad_accum × processes), for `packed_step`."""
        self.items, self.kind, self.batching, self.batch_size = items, kind, batching, batch_size
        self.weighting, self.pad_id, self.seed, self.max_tokens = weighting, pad_id, seed, max_tokens
        self.versions = versions
        self.lengths = [max(kind.length(v) for v in versions[i]) if versions else kind.length(item)
                        for i, item in enumerate(items)]  # the longest version, so packed rows always fit
        self.rows_per_step = rows_per_step
        self.row_tokens = max_tokens
        if batching == "packed_step":
            self.row_tokens = step_row_tokens(self.lengths, batch_size * rows_per_step)  # a bin is a whole step
        self.bins = best_fit_decreasing(self.lengths, self.row_tokens) if batching.startswith("packed") else None
        self.epoch, self.cursor = 0, 0
        self._plan: list[list[int]] | None = None

    @property
    def batches_per_epoch(self) -> int:
        if self.batching == "packed_step":
            return sum(min(self.rows_per_step, len(b)) for b in self.bins)
        units = len(self.bins) if self.bins is not None else len(self.items)
        return -(-units // self.batch_size)

    def padding_fraction(self) -> float:
        """Share of the first epoch's micro-batch tokens that are padding (packed rows have none)."""
        if self.bins is not None:
            return 0.0
        generator = torch.Generator().manual_seed(self.seed * 1_000_003)
        plan = epoch_plan(self.lengths, self.batching, self.batch_size, None, generator)
        rows = [self.kind.rows(item) for item in self.items]
        computed = sum(sum(len(rows[i]) for i in b) * max(self.lengths[i] for i in b) for b in plan)
        return 1 - sum(len(row.input_ids) for item_rows in rows for row in item_rows) / computed

    def summary(self) -> str:
        if self.bins is None:
            return f"{self.batching} batches, {self.padding_fraction():.1%} of their tokens padding"
        fill = sum(self.lengths) / (len(self.bins) * self.row_tokens)
        if self.batching == "packed":
            return f"packed into {len(self.bins)} rows of {self.row_tokens} tokens, {fill:.1%} full"
        return (f"packed by step: {len(self.bins)} bins of {self.row_tokens} tokens, {fill:.1%} full, "
                f"{len(self.items) / len(self.bins):.1f} examples per step")

    def next_indices(self) -> list[int]:
        if self.cursor >= self.batches_per_epoch:
            self.epoch, self.cursor, self._plan = self.epoch + 1, 0, None
        if self._plan is None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._plan = epoch_plan(self.lengths, self.batching, self.batch_size, self.bins, generator,
                                    self.rows_per_step)
        self.cursor += 1
        return self._plan[self.cursor - 1]

    def next(self) -> dict[str, torch.Tensor]:
        indices = self.next_indices()
        if self.versions:
            picks = choices(self.seed, self.epoch, self.cursor, len(indices), len(self.versions[0]))
            items = [self.versions[i][k] for i, k in zip(indices, picks)]
        else:
            items = [self.items[i] for i in indices]
        if self.bins is not None:
            return collate_packed(items, [target_weights(item, self.weighting) for item in items])
        return self.kind.collate(items, self.pad_id, self.weighting)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor, self._plan = state["epoch"], state["cursor"], None


def eval_batches(items: list[Rendered], batch_size: int, pad_id: int):
    """Fixed-order batches, sorted by length so little compute goes to padding."""
    ordered = sorted(items, key=lambda item: len(item.input_ids))
    for start in range(0, len(ordered), batch_size):
        yield collate(ordered[start : start + batch_size], pad_id)
