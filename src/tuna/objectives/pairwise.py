"""What the preference objectives (DPO, SimPO, ORPO) share.

A pair micro-batch holds n chosen rows and then n rejected rows (`data.batch.collate_pairs`), labelled
on the answer tokens only. Each row's answer log-prob is the sum of its labelled tokens' log-probs
(SimPO and ORPO divide it by the answer's length). Every preference loss is a mean over pairs, so a
step's normaliser is its number of pairs: accumulation splits a step without changing it.

Logged with TRL's names, as means over the step's pairs: `rewards/chosen`, `rewards/rejected`,
`rewards/margins` (chosen − rejected) and `rewards/accuracies` (the share of pairs whose chosen
reward is strictly higher), plus `logps/chosen` and `logps/rejected`, the log-probs the loss uses.
"""
from __future__ import annotations

import contextlib

import torch

from tuna.data.batch import eval_pair_batches
from tuna.data.preference import Pair
from tuna.objectives.sft import next_token_losses


def answer_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-prob of its labelled tokens, and how many there are."""
    losses, mask = next_token_losses(logits, labels)
    return -losses.sum(-1), mask.sum(-1)


def reference_answer_logps(batch: dict, ctx) -> torch.Tensor:
    """The starting model's summed answer log-probs per row: precomputed ones carried by the batch, else live."""
    if "reference_logps" in batch:
        return batch["reference_logps"]
    return answer_logps(ctx.reference(batch), batch["labels"])[0]


def batch_weight(batch: dict) -> float:
    """This micro-batch's pairs: two rows each."""
    return batch["input_ids"].shape[0] / 2


def pair_stats(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, chosen_logps: torch.Tensor,
               rejected_logps: torch.Tensor, step_weight: float) -> dict:
    """This micro-batch's share of the step's means over pairs."""
    share = lambda values: float(values.detach().float().sum()) / step_weight
    margins = chosen_rewards - rejected_rewards
    return {"rewards/chosen": share(chosen_rewards), "rewards/rejected": share(rejected_rewards),
            "rewards/margins": share(margins), "rewards/accuracies": share(margins > 0),
            "logps/chosen": share(chosen_logps), "logps/rejected": share(rejected_logps)}


@torch.no_grad()
def heldout_preference(model, objective, ctx, pairs: list[Pair], *, batch_size: int, pad_id: int,
                       device: torch.device, autocast=contextlib.nullcontext) -> dict[str, float]:
    """The objective's loss and statistics, as means over the held-out pairs."""
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    for _, batch in eval_pair_batches(pairs, batch_size, pad_id):
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            loss, stats = objective.loss(model, batch, len(pairs), ctx)
        for key, value in {"loss": float(loss), **stats}.items():
            totals[key] = totals.get(key, 0.0) + value
    model.train(was_training)
    return totals
