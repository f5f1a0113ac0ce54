"""The preference losses against their closed forms, on a model whose log-probs are known by hand."""
import math
from types import SimpleNamespace

import pytest
import torch

from tuna.data.preference import collate_pairs
from tuna.data.preference import Pair
from tuna.data.render import IGNORE, Rendered
from tuna.objectives import dpo, orpo, simpo
from tuna.objectives.base import ObjectiveContext
from tuna.data.kinds import PAIRS as PAIR_KIND
from tests.objectives.test_sft import VOCAB, FixedLogits

P = IGNORE
PAIRS = [Pair(Rendered([1, 2, 3, 4], [P, P, 3, 4]), Rendered([1, 2, 0, 1, 3], [P, P, 0, 1, 3])),
         Pair(Rendered([4, 4, 2], [P, P, 2]), Rendered([4, 4, 1, 1], [P, P, 1, 1])),
         Pair(Rendered([0, 3, 3], [P, 3, 3]), Rendered([0, 2], [P, 2])),
         Pair(Rendered([2, 1, 0, 0, 4], [P, P, 0, 0, 4]), Rendered([2, 1, 4], [P, P, 4]))]
REFERENCE = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(7))


def hand_logp(table: torch.Tensor, item: Rendered) -> tuple[float, int]:
    """Summed log-prob of the labelled tokens, and their count, from the next-token table."""
    terms = [float(torch.log_softmax(table[item.input_ids[j - 1]].detach().double(), -1)[item.labels[j]])
             for j in range(1, len(item.labels)) if item.labels[j] != IGNORE]
    return sum(terms), len(terms)


def context(objective: str, reference_table=None, **knobs) -> ObjectiveContext:
    recipe = SimpleNamespace(dpo=SimpleNamespace(beta=0.3, loss="sigmoid"), simpo=SimpleNamespace(beta=2.0, gamma=0.7),
                             orpo=SimpleNamespace(beta=0.4))
    for name, value in knobs.items():
        section, key = name.split("__")
        setattr(getattr(recipe, section), key, value)
    reference = None if reference_table is None else (lambda batch: reference_table[batch["input_ids"]].detach())
    return ObjectiveContext(getattr(recipe, objective), reference=reference)


def whole_batch(objective_loss, ctx, pairs=PAIRS):
    batch = collate_pairs(pairs, pad_id=0)
    value, stats = objective_loss(FixedLogits(), batch, PAIR_KIND.batch_weight(batch), ctx)
    return float(value.detach()), stats


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


DPO_FORMS = {"sigmoid": lambda h, beta: -log_sigmoid(beta * h), "ipo": lambda h, beta: (h - 1 / (2 * beta)) ** 2,
             "hinge": lambda h, beta: max(0.0, 1 - beta * h)}


@pytest.mark.parametrize("kind", DPO_FORMS)
def test_dpo_losses_and_rewards_equal_their_closed_forms(kind):
    policy, beta = FixedLogits().table, 0.3
    chosen = [hand_logp(policy, p.chosen)[0] - hand_logp(REFERENCE, p.chosen)[0] for p in PAIRS]
    rejected = [hand_logp(policy, p.rejected)[0] - hand_logp(REFERENCE, p.rejected)[0] for p in PAIRS]
    h = [c - r for c, r in zip(chosen, rejected)]
    assert len({x > 0 for x in h}) == 2  # some pairs are ranked right and some wrong
    value, stats = whole_batch(dpo.loss, context("dpo", REFERENCE, dpo__loss=kind))
    assert value == pytest.approx(sum(DPO_FORMS[kind](x, beta) for x in h) / len(h), rel=1e-5)
    assert stats["rewards/chosen"] == pytest.approx(beta * sum(chosen) / 4, rel=1e-5, abs=1e-6)
    assert stats["rewards/rejected"] == pytest.approx(beta * sum(rejected) / 4, rel=1e-5, abs=1e-6)
    assert stats["rewards/margins"] == pytest.approx(beta * sum(h) / 4, rel=1e-5, abs=1e-6)
    assert stats["rewards/accuracies"] == sum(x > 0 for x in h) / 4
    assert stats["logps/chosen"] == pytest.approx(sum(hand_logp(policy, p.chosen)[0] for p in PAIRS) / 4, rel=1e-5)


def test_dpo_reads_precomputed_reference_logps_like_a_live_reference():
    live = whole_batch(dpo.loss, context("dpo", REFERENCE))
    precomputed = [Pair(p.chosen, p.rejected, (hand_logp(REFERENCE, p.chosen)[0], hand_logp(REFERENCE, p.rejected)[0]))
                   for p in PAIRS]
    assert whole_batch(dpo.loss, context("dpo", None), precomputed)[0] == pytest.approx(live[0], rel=1e-5)


def test_simpo_loss_equals_its_closed_form():
    table, beta, gamma = FixedLogits().table, 2.0, 0.7
    mean = lambda item: hand_logp(table, item)[0] / hand_logp(table, item)[1]
    margins = [beta * mean(p.chosen) - beta * mean(p.rejected) for p in PAIRS]
    value, stats = whole_batch(simpo.loss, context("simpo"))
    assert value == pytest.approx(sum(-log_sigmoid(m - gamma) for m in margins) / 4, rel=1e-5)
    assert stats["rewards/chosen"] == pytest.approx(sum(beta * mean(p.chosen) for p in PAIRS) / 4, rel=1e-5)
    assert stats["rewards/margins"] == pytest.approx(sum(margins) / 4, rel=1e-5, abs=1e-6)


def test_orpo_loss_equals_its_closed_form():
    table, lam = FixedLogits().table, 0.4
    mean = lambda item: hand_logp(table, item)[0] / hand_logp(table, item)[1]
    odds = lambda item: math.exp(mean(item)) / (1 - math.exp(mean(item)))
    ratios = [math.log(odds(p.chosen) / odds(p.rejected)) for p in PAIRS]
    nll = [-mean(p.chosen) for p in PAIRS]
    value, stats = whole_batch(orpo.loss, context("orpo"))
    assert value == pytest.approx(sum(n - lam * log_sigmoid(r) for n, r in zip(nll, ratios)) / 4, rel=1e-5)
    assert stats["nll"] == pytest.approx(sum(nll) / 4, rel=1e-5)
    assert stats["log_odds_ratio"] == pytest.approx(sum(ratios) / 4, rel=1e-5, abs=1e-6)
    assert stats["rewards/chosen"] == pytest.approx(lam * sum(mean(p.chosen) for p in PAIRS) / 4, rel=1e-5)


def test_orpo_nll_is_the_mean_over_pairs_of_each_chosen_answers_token_mean_not_trls():
    """Ours (the paper's per-example L_SFT): each pair's mean NLL over its chosen *answer* tokens, then the mean
    over pairs. TRL's ORPOTrainer instead takes one token mean over every non-padding token of all chosen rows,
    prompt tokens included (its labels are the input ids). With beta 0 the loss is the NLL term alone."""
    table = FixedLogits().table
    ours = sum(-hand_logp(table, p.chosen)[0] / hand_logp(table, p.chosen)[1] for p in PAIRS) / len(PAIRS)
    whole_rows = [Rendered(p.chosen.input_ids, [P] + p.chosen.input_ids[1:]) for p in PAIRS]  # every token labelled
    trl = -sum(hand_logp(table, r)[0] for r in whole_rows) / sum(hand_logp(table, r)[1] for r in whole_rows)
    value, stats = whole_batch(orpo.loss, context("orpo", orpo__beta=0.0))
    assert value == pytest.approx(ours, rel=1e-6) and stats["nll"] == pytest.approx(ours, rel=1e-6)
    assert abs(value - trl) > 1e-3  # the two definitions differ on this batch


@pytest.mark.parametrize("objective", [dpo, simpo, orpo], ids=["dpo", "simpo", "orpo"])
def test_accumulated_micro_batches_give_the_step_loss_and_gradient_of_one_batch(objective):
    ctx = context(objective.OBJECTIVE.name, REFERENCE)

    def step(split):
        model = FixedLogits()
        micro = [collate_pairs(part, pad_id=0) for part in split]
        step_weight = sum(PAIR_KIND.batch_weight(b) for b in micro)
        assert step_weight == len(PAIRS)  # the normaliser counts pairs
        total, stats = 0.0, {}
        for batch in micro:
            value, part_stats = objective.loss(model, batch, step_weight, ctx)
            value.backward()
            total += float(value.detach())
            stats = {k: stats.get(k, 0.0) + v for k, v in part_stats.items()}
        return total, stats, model.table.grad

    one, two = step([PAIRS]), step([PAIRS[:2], PAIRS[2:]])  # 1 x 4 and 2 x 2
    assert one[0] == pytest.approx(two[0], rel=1e-6)
    assert one[1] == pytest.approx(two[1], rel=1e-5, abs=1e-6)
    torch.testing.assert_close(one[2], two[2])
