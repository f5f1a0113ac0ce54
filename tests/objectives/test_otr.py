"""OTR: one-token rollouts rewarded against the gold token, and the policy gradient on them."""
from __future__ import annotations

import pytest
import torch

from tests.objectives.test_sft import ITEMS, FixedLogits
from tuna.data.batch import collate
from tuna.data.kinds import SEQUENCES
from tuna.data.render import Rendered
from tuna.objectives.base import ObjectiveContext
from tuna.objectives.otr import OtrKnobs, loss, rollout_terms, sample_tokens


def test_rewards_and_gradient_equal_reinforce_on_the_given_samples():
    model, batch = FixedLogits(), collate(ITEMS, pad_id=0)
    logits = model.table[batch["input_ids"]]
    targets = batch["labels"][:, 1:]
    tokens = torch.randint(0, logits.shape[-1], (*targets.shape, 5), generator=torch.Generator().manual_seed(0))
    tokens[..., 0] = targets.clamp(min=0)  # at least one gold sample per position
    per_token, gold = rollout_terms(logits, batch["labels"], tokens, temperature=0.7, wrong_reward=-0.5)
    per_token.sum().backward()
    ours = model.table.grad.clone()

    model.table.grad = None
    expected, rates = 0.0, []
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            if targets[b, t] == -100:
                continue
            logp = torch.log_softmax(model.table[batch["input_ids"][b, t]] / 0.7, -1)
            rewards = [1.0 if int(a) == int(targets[b, t]) else -0.5 for a in tokens[b, t]]
            expected = expected - sum(r * logp[int(a)] for r, a in zip(rewards, tokens[b, t])) / 5
            rates.append(sum(r == 1.0 for r in rewards) / 5)
    expected.backward()
    torch.testing.assert_close(ours, model.table.grad)
    assert float(gold.sum()) == pytest.approx(sum(rates))


def test_samples_follow_the_tempered_policy():
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1]]]))
    torch.manual_seed(0)
    draws = sample_tokens(logits.expand(1, 400, 3), samples=50, temperature=1.0)
    freq = torch.bincount(draws.reshape(-1), minlength=3).float() / draws.numel()
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.01, rtol=0)
    hot = sample_tokens(logits.expand(1, 400, 3), samples=50, temperature=0.25)  # sharper: p^4, renormalised
    expected = torch.tensor([0.7, 0.2, 0.1]) ** 4
    hot_freq = torch.bincount(hot.reshape(-1), minlength=3).float() / hot.numel()
    torch.testing.assert_close(hot_freq, expected / expected.sum(), atol=0.01, rtol=0)


def test_a_model_certain_of_every_gold_token_samples_only_gold_and_gets_sfts_value():
    items = [Rendered([0, 1, 2], [-100, 1, 2]), Rendered([3, 4], [-100, 4])]  # one gold per input token
    model, batch = FixedLogits(), collate(items, pad_id=0)
    weight = SEQUENCES.batch_weight(batch)
    with torch.no_grad():
        model.table.fill_(-30.0)
        for item in items:  # the model is certain of every gold token
            for j in range(1, len(item.labels)):
                if item.labels[j] != -100:
                    model.table[item.input_ids[j - 1], item.labels[j]] = 30.0
    value, stats = loss(model, batch, weight, ObjectiveContext(OtrKnobs(samples=4)))
    assert stats["gold_rate"] == pytest.approx(1.0)
    assert float(value) == pytest.approx(stats["nll"], abs=1e-6)  # every sample is gold: SFT's value
