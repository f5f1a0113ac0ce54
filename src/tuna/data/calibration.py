"""Calibration batches: the examples a data-driven method looks at while it prepares.

EVA and CorDA read activations and sparse fine-tuning reads gradients before training starts. They
get fixed, seeded micro-batches of the training split and of general text (the stdlib docstrings),
the latter being what a knowledge-preserving method (CorDA KPM) should keep working.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from tuna.data.batch import collate
from tuna.data.general_text import stdlib_docstrings
from tuna.data.render import Rendered, render_records


@dataclass
class Calibration:
    """`task(n)` / `general(n)`: n collated micro-batches on the model's device; `max_tokens`: the longest
    training example (`data.max_tokens`), the context length the run trains for."""
    task: Callable[[int], list[dict]]
    general: Callable[[int], list[dict]]
    max_tokens: int = 1024


def build_calibration(train: list[Rendered], tokenizer, batch_size: int, device, seed: int,
                      max_tokens: int) -> Calibration:
    def batches(items: list[Rendered], n: int) -> list[dict]:
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
        picked = [items[i] for i in order[: n * batch_size]]
        return [{k: v.to(device) for k, v in collate(picked[i : i + batch_size], tokenizer.pad_token_id).items()}
                for i in range(0, len(picked), batch_size)]

    def general(n: int) -> list[dict]:
        records = [{"text": text} for text in stdlib_docstrings(count=n * batch_size)]
        items, _ = render_records(records, "text", tokenizer, train_on="all", max_tokens=256, overflow="truncate")
        return batches(items, n)

    return Calibration(task=lambda n: batches(train, n), general=general, max_tokens=max_tokens)
