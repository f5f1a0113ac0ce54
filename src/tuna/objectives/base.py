"""The Objective interface: what a training step minimises.

`loss(model, batch, step_weight, ctx)` returns (this micro-batch's share of the step loss, stats to
log). `step_weight` is the whole optimizer step's normaliser (the data kind's `batch_weight` summed
over its micro-batches), so accumulation splits a step without changing it. `ctx` holds what the
loss may read besides the batch: the objective's own knobs, the starting model's logits
(`ctx.reference`, for objectives anchored to it), the tokenizer and the run's reward-error budget
(for objectives that sample and score), and the per-token loss to use (chunked when
`train.loss_chunk_tokens` is set and the objective declares `chunked_loss`).

An objective names its data kind (`data.kinds`): sequences, preference pairs or prompts. One whose
reference enters only as each answer's summed log-prob (`reference_per_sequence`: DPO) does not
need the starting model alive: when no adapter can be switched off to recover it, the loop computes
those numbers once before training (`objectives.reference_logps`) and the batches carry them.
One that trains on data of the model's own making (S3FT) has `rewrite_train`: the loop hands it the
training records and the starting model before anything else touches either.

Adding one: a module with an `OBJECTIVE` and a line in `tuna.objectives.REGISTRY`
(docs/adding-an-objective.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from tuna.data.kinds import DataKind
from tuna.models.forward import token_losses
from tuna.sections import Section


@dataclass(frozen=True)
class Objective:
    name: str
    summary: str
    paper: str
    kind: DataKind
    loss: Callable[..., tuple[torch.Tensor, dict]]
    knobs: type[Section] | None = None  # its config section, under the objective's own name
    needs_reference: bool = False
    reference_per_sequence: bool = False
    chunked_loss: bool = False  # its loss is per-token cross-entropy through `ctx.token_losses`
    check_data: Callable[[Section, list], None] | None = None  # (knobs, all items): refuse unusable data early
    # (train records, knobs, starting model, tokenizer, *, data_format, max_tokens, batch_size, run_dir, errors,
    #  resume, say) -> (records, note)
    rewrite_train: Callable[..., tuple[list[dict], str]] | None = None
    reward: Callable[[list[str], list, "ObjectiveContext"], list[float]] | None = None  # (texts, prompt items, ctx)
    # (model, this process's micro-batches of the step, ctx) -> those batches, with what the objective sampled:
    # runs before any of the step's losses (GRPO samples the whole step first, as TRL's generation batch)
    rollout: Callable[..., list[dict]] | None = None


@dataclass
class ObjectiveContext:
    knobs: Section | None = None  # the objective's own section
    reference: Callable[[dict], torch.Tensor] | None = None  # batch -> the starting model's logits
    tokenizer: object = None  # for objectives that decode what they sample
    reward_errors: object = None  # `rewards.RewardErrors` of the run, for objectives that score samples
    token_losses: Callable = token_losses  # (model, batch) -> per-position losses and mask
    sum_over_ranks: Callable[[float], float] = lambda value: value  # a step total over all processes


PLAIN = ObjectiveContext()  # no knobs, no reference: for losses that need neither
