"""GRPO: group relative policy optimisation with verifiable rewards (DeepSeekMath).

Per prompt, sample `group_size` completions with the KV cache, score each with the reward
functions (`rewards`), and normalise the rewards within the group: A_i = (r_i − mean) / (std + ε).
Every token of completion i carries A_i in the clipped surrogate, and a KL penalty to the
reference model is subtracted per token with the unbiased k3 estimator:

    J = 1/G Σ_i 1/|o_i| Σ_t [ min(ρ_t A_i, clip(ρ_t, 1−ε, 1+ε) A_i) − β KL_t ],
    KL_t = π_ref/π_θ − log(π_ref/π_θ) − 1,   ρ_t = π_θ / π_θ_old

Each generation feeds one gradient step, so π_θ_old is π_θ detached: ρ = 1 in value and the clip
never binds, but its gradient is the policy gradient (GRPO with μ = 1, as TRL defaults to). A group
whose rewards are all equal has A = 0 and contributes only the KL term.

Every log-prob (the policy's, the reference's, and so the ratio and the KL) is taken from the logits
divided by the sampling temperature, as TRL does: the samples were drawn from that distribution, so
the policy gradient must be taken of it too.

All of a step's completions are sampled first (`rollout`), then its losses run, as TRL's generation
batch: the step's token count is then known, which DAPO's aggregation divides by.
`grpo.loss_type` chooses how the per-token terms ℓ_t = −[min(...) − β KL_t] become the step loss:

    grpo     mean over the step's sequences of each sequence's mean over its tokens (the paper's 1/|o_i|)
    bnpo     each micro-batch's mean over its tokens, averaged over the step's micro-batches (TRL's bnpo)
    dr_grpo  sum over all tokens / (sequences × grpo.max_new_tokens): a constant, so no length bias (Dr. GRPO)
    dapo     sum over all tokens / the step's completion tokens over all processes (DAPO's token-level loss)

Dr. GRPO also drops the division of advantages by the group's std; `grpo.scale_rewards` unset follows
each loss type's paper (no std scaling for dr_grpo only); TRL keeps the two separate.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from tuna.data.kinds import PROMPTS
from tuna.models.forward import IGNORE, model_logits
from tuna.models.generate import generate_ids
from tuna.objectives.base import Objective
from tuna.objectives.rewards import RewardErrors, RewardKnobs, check_records, score

EPSILON = 1e-4


LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def group_advantages(rewards: torch.Tensor, scale: bool = True) -> torch.Tensor:
    """(prompts, group) rewards -> advantages centred within each row, and divided by its sample std (as TRL)
    when `scale`."""
    mean = rewards.mean(dim=1, keepdim=True)
    if not scale:
        return rewards - mean
    std = rewards.std(dim=1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + EPSILON)


def token_terms(logps: torch.Tensor, reference_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float, kl_beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token −[min(ρA, clip(ρ)A) − β KL] and the k3 KL, both 0 off the completion; logps (N, T), advantages (N,)."""
    ratio = torch.exp(logps - logps.detach())
    a = advantages[:, None]
    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    log_ratio = reference_logps - logps
    kl = torch.exp(log_ratio) - log_ratio - 1
    return -(surrogate - kl_beta * kl) * mask, kl * mask


def policy_loss(logps: torch.Tensor, reference_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float, kl_beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence −J_i (mean over its tokens) and per-sequence mean KL."""
    per_token, kl = token_terms(logps, reference_logps, advantages, mask, clip, kl_beta)
    lengths = mask.sum(1).clamp(min=1)
    return per_token.sum(1) / lengths, (kl.sum(1) / lengths).detach()


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, *, group: int, step_prompts: float,
              max_new_tokens: int, step_micro_batches: float, step_tokens: float) -> torch.Tensor:
    """This micro-batch's share of the step loss under `loss_type` (see the module docstring)."""
    if loss_type == "grpo":
        per_sequence = per_token.sum(1) / mask.sum(1).clamp(min=1)
        return per_sequence.view(-1, group).mean(1).sum() / step_prompts
    if loss_type == "bnpo":
        return per_token.sum() / mask.sum().clamp(min=1) / step_micro_batches
    if loss_type == "dr_grpo":
        return per_token.sum() / (step_prompts * group * max_new_tokens)
    return per_token.sum() / max(step_tokens, 1.0)


def sequence_batch(prompt_ids: list[list[int]], completions: list[list[int]], group: int, pad_id: int) -> dict:
    """Prompt + completion rows, right-padded, labelled on the completion only."""
    rows = [(prompt_ids[i // group], c) for i, c in enumerate(completions)]
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE)
    attention = torch.zeros_like(input_ids)
    for r, (p, c) in enumerate(rows):
        input_ids[r, : len(p) + len(c)] = torch.tensor(p + c)
        labels[r, len(p) : len(p) + len(c)] = torch.tensor(c, dtype=torch.long)
        attention[r, : len(p) + len(c)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(label t+1 | ≤ t) per position and the completion mask, both (N, T−1)."""
    targets = labels[:, 1:]
    mask = targets != IGNORE
    logps = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return logps * mask, mask.float()


class GrpoKnobs(RewardKnobs):
    group_size: int = Field(4, ge=2, description="completions sampled per prompt; advantages are normalised within them")
    max_new_tokens: int = Field(32, ge=1, description="longest sampled completion")
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    kl_beta: float = Field(0.04, ge=0.0, description="weight of the per-token KL to the starting model (paper: 0.04)")
    clip: float = Field(0.2, gt=0.0, description="ratio clip epsilon")
    rewards: list[str] = Field(["exact_match"], min_length=1, description="built-in reward names or module:function")
    reward_weights: list[float] | None = Field(None, description="one weight per reward; unset: all 1")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = Field(
        "grpo", description="how per-token terms become the step loss: grpo (per-sequence means, the paper), bnpo, "
                            "dr_grpo (constant normaliser) or dapo (token-level); TRL's default is dapo")
    scale_rewards: bool | None = Field(None, description="divide advantages by the group's std; unset: as the loss "
                                                         "type's paper (all but dr_grpo)")

    @model_validator(mode="after")
    def _one_weight_per_reward(self) -> "GrpoKnobs":
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ValueError(f"grpo.reward_weights has {len(self.reward_weights)} values for {len(self.rewards)} rewards")
        return self


def sample(model, batch: dict, ctx) -> dict:
    """One micro-batch's completions, their rewards and advantages, and its prompt + completion rows."""
    knobs, tokenizer = ctx.knobs, ctx.tokenizer
    group = knobs.group_size
    completions = generate_ids(model, batch["prompt_ids"], sample=True, group=group, max_new_tokens=knobs.max_new_tokens,
                               temperature=knobs.temperature, top_p=knobs.top_p,
                               pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    examples = [batch["examples"][i // group] for i in range(len(completions))]
    indices = [batch["indices"][i // group] for i in range(len(completions))]
    rewards = torch.tensor(total_rewards(texts, examples, indices, knobs, ctx.reward_errors)).view(-1, group)
    scale = knobs.scale_rewards if knobs.scale_rewards is not None else knobs.loss_type != "dr_grpo"
    rows = sequence_batch(batch["prompt_ids"], completions, group, tokenizer.pad_token_id)
    return {**batch, **rows, "rewards": rewards, "advantages": group_advantages(rewards, scale).flatten()}


def rollout(model, batches: list[dict], ctx) -> list[dict]:
    """Every micro-batch of the step sampled before any loss runs, each told the step's totals (over all
    processes) that the loss types divide by."""
    sampled = [sample(model, batch, ctx) for batch in batches]
    completion_tokens = sum(float((b["labels"][:, 1:] != IGNORE).sum()) for b in sampled)
    totals = {"step_tokens": ctx.sum_over_ranks(completion_tokens),
              "step_micro_batches": ctx.sum_over_ranks(float(len(sampled)))}
    return [{**b, **totals} for b in sampled]


def loss(model, batch: dict, step_weight: float, ctx) -> tuple[torch.Tensor, dict]:
    """`step_weight` counts the step's prompts; `batch` comes from `rollout`."""
    knobs = ctx.knobs
    rows = {k: batch[k] for k in ("input_ids", "labels", "attention_mask")}
    logps, mask = token_logps(model_logits(model, rows) / knobs.temperature, rows["labels"])
    reference, _ = token_logps(ctx.reference(rows) / knobs.temperature, rows["labels"])
    per_token, kl = token_terms(logps, reference, batch["advantages"].to(logps.device), mask, knobs.clip,
                                knobs.kl_beta)
    value = aggregate(per_token, mask, knobs.loss_type, group=knobs.group_size, step_prompts=step_weight,
                      max_new_tokens=knobs.max_new_tokens, step_micro_batches=batch["step_micro_batches"],
                      step_tokens=batch["step_tokens"])
    rewards = batch["rewards"]
    share = len(batch["prompt_ids"]) / step_weight  # this micro-batch's part of the step's means over prompts
    stats = {"reward": float(rewards.mean()) * share, "reward_std": float(rewards.std(1).mean()) * share,
             "kl": float(kl.sum() / mask.sum().clamp(min=1)) * share,  # a mean over completion tokens, as TRL
             "completion_length": float(mask.sum(1).mean()) * share,
             "frac_reward_zero_std": float((rewards.std(1) == 0).float().mean()) * share,
             "tokens": int(rows["attention_mask"].sum())}
    return value, stats


def total_rewards(texts: list[str], examples: list[dict], indices: list[int], knobs, errors: RewardErrors) -> list[float]:
    """The configured rewards of each text, weighted (all weights 1 unless `grpo.reward_weights` says otherwise)."""
    weights = knobs.reward_weights or [1.0] * len(knobs.rewards)
    return score(knobs.rewards, weights, texts, examples, indices, knobs, errors)


def reward(texts: list[str], items: list, ctx) -> list[float]:
    """The weighted rewards of answers to prompt items (held-out scoring, `data.kinds.PROMPTS`)."""
    return total_rewards(texts, [i.record for i in items], [i.index for i in items], ctx.knobs, ctx.reward_errors)


def check_data(knobs, items: list) -> None:
    check_records(knobs.rewards, [item.record for item in items])


OBJECTIVE = Objective(name="grpo", summary="group relative policy optimisation on sampled completions, scored by "
                                           "reward functions (grpo.*)",
                      paper="DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
                      kind=PROMPTS, loss=loss, knobs=GrpoKnobs, needs_reference=True, check_data=check_data,
                      reward=reward, rollout=rollout)
