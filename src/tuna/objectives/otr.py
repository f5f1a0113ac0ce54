"""One-Token Rollout (OTR): a policy-gradient signal from SFT data, one token at a time.

"One-Token Rollout: Guiding Supervised Fine-Tuning of LLMs with Policy Gradient". Each answer position
t is a one-step episode: its state is the prompt and the gold answer so far (one teacher-forced
forward pass gives every state), `otr.samples` candidate tokens a_1..a_K are drawn from the current
policy at `otr.temperature`, and each is rewarded 1 when it is the gold token and `otr.wrong_reward`
(0 by default) otherwise. The loss is REINFORCE on those rollouts:

    loss = Σ_t w_t · −(1/K) Σ_k r(a_k) · log π_T(a_k | s_t)  /  step weight

with π_T the policy at the sampling temperature (the distribution the samples came from) and w_t the
SFT token weights (`train.loss_weighting`). With wrong_reward 0 a position whose K samples all miss the
gold token gives no gradient, and one that hits it n times pulls like SFT weighted by n/K, an on-policy
estimate of the model's own probability of the gold token. A negative `wrong_reward` also pushes down
the wrong tokens the model is likely to produce.
Logged: `train/gold_rate` (share of samples equal to the gold token) and `train/nll` (plain SFT loss).
"""
from __future__ import annotations

import torch
from pydantic import Field

from tuna.data.kinds import SEQUENCES
from tuna.models.forward import IGNORE, model_logits, next_token_losses
from tuna.objectives.base import Objective
from tuna.sections import Section


class OtrKnobs(Section):
    samples: int = Field(8, ge=1, le=256, description="candidate tokens sampled from the policy at each answer position")
    temperature: float = Field(1.0, gt=0.0, description="sampling temperature of the one-token rollouts")
    wrong_reward: float = Field(0.0, le=0.0, description="reward of a sampled token that is not the gold one "
                                                         "(0: only gold samples pull; negative: wrong ones are pushed down)")


def sample_tokens(logits: torch.Tensor, samples: int, temperature: float) -> torch.Tensor:
    """(B, T, K) tokens drawn from softmax(logits / temperature) at every position, independently."""
    probs = torch.softmax(logits.detach().float() / temperature, dim=-1)
    flat = torch.multinomial(probs.reshape(-1, probs.size(-1)), samples, replacement=True)
    return flat.view(*logits.shape[:-1], samples)


def rollout_terms(logits: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor, temperature: float,
                  wrong_reward: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position: −(1/K) Σ_k r(a_k) log π_T(a_k), and the share of samples equal to the gold token.
    `logits` (B, T, V) and `tokens` (B, T-1, K) are aligned with the next-token targets labels[:, 1:]."""
    targets = labels[:, 1:]
    logps = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1).gather(-1, tokens)
    hits = (tokens == targets.clamp(min=0)[..., None]).float()
    rewards = hits + (1 - hits) * wrong_reward
    mask = (targets != IGNORE).float()
    return -(rewards * logps).mean(-1) * mask, hits.mean(-1) * mask


def loss(model, batch: dict, step_weight: float, ctx) -> tuple[torch.Tensor, dict]:
    knobs = ctx.knobs
    logits = model_logits(model, batch)
    tokens = sample_tokens(logits[:, :-1], knobs.samples, knobs.temperature)
    per_token, gold = rollout_terms(logits, batch["labels"], tokens, knobs.temperature, knobs.wrong_reward)
    weights = batch["weights"][:, 1:]
    nll, _ = next_token_losses(logits.detach(), batch["labels"])
    return (per_token * weights).sum() / step_weight, {"gold_rate": float((gold * weights).sum()) / step_weight,
                                                       "nll": float((nll * weights).sum()) / step_weight}


OBJECTIVE = Objective(name="otr", summary="one-token rollouts: per answer position, sampled tokens rewarded for "
                                          "matching the gold one, policy gradient (otr.*)",
                      paper="One-Token Rollout: Guiding Supervised Fine-Tuning of LLMs with Policy Gradient",
                      kind=SEQUENCES, loss=loss, knobs=OtrKnobs)
