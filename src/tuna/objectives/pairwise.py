"""What the preference objectives (DPO, SimPO, ORPO) share.

A pair micro-batch holds n chosen rows and then n rejected rows (`data.batch.collate_pairs`), labelled
on the answer tokens only. Each row's answer log-prob is the sum of its labelled tokens' log-probs
(SimPO and ORPO divide it by the answer's length). Every preference loss is a mean over pairs, so a
step's normaliser is its number of pairs (`data.kinds.PAIRS`): accumulation splits a step without changing it.

Logged with TRL's names, as means over the step's pairs: `rewards/chosen`, `rewards/rejected`,
`rewards/margins` (chosen − rejected) and `rewards/accuracies` (the share of pairs whose chosen
reward is strictly higher), plus `logps/chosen` and `logps/rejected`, the log-probs the loss uses.
"""
from __future__ import annotations

import torch

from tuna.models.forward import answer_logps


def reference_answer_logps(batch: dict, ctx) -> torch.Tensor:
    """The starting model's summed answer log-probs per row: precomputed ones carried by the batch, else live."""
    if "reference_logps" in batch:
        return batch["reference_logps"]
    return answer_logps(ctx.reference(batch), batch["labels"])[0]


def pair_stats(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, chosen_logps: torch.Tensor,
               rejected_logps: torch.Tensor, step_weight: float) -> dict:
    """This micro-batch's share of the step's means over pairs."""
    share = lambda values: float(values.detach().float().sum()) / step_weight
    margins = chosen_rewards - rejected_rewards
    return {"rewards/chosen": share(chosen_rewards), "rewards/rejected": share(rejected_rewards),
            "rewards/margins": share(margins), "rewards/accuracies": share(margins > 0),
            "logps/chosen": share(chosen_logps), "logps/rejected": share(rejected_logps)}
