import pytest
import torch

from tuna.data.batch import collate
from tuna.objectives import anchored_sft, dft
from tuna.objectives.base import ObjectiveContext
from tuna.data.kinds import SEQUENCES

batch_weight = SEQUENCES.batch_weight
from tests.objectives.test_sft import ITEMS, FixedLogits


def context(beta: float, reference_table: torch.Tensor, kl: str = "ref_to_policy") -> ObjectiveContext:
    knobs = anchored_sft.AnchoredSftKnobs(kl_beta=beta, kl=kl)
    return ObjectiveContext(knobs, reference=lambda batch: reference_table[batch["input_ids"]].detach())


@pytest.mark.parametrize("direction", ["ref_to_policy", "policy_to_ref"])
def test_asft_is_dft_plus_beta_times_the_full_vocabulary_kl(direction):
    model, batch = FixedLogits(), collate(ITEMS, pad_id=0)
    reference = torch.randn(model.table.shape, generator=torch.Generator().manual_seed(1))
    weight = batch_weight(batch)
    dft_value = float(dft.loss(model, batch, weight)[0].detach())
    with_kl, stats = anchored_sft.loss(model, batch, weight, context(0.3, reference, direction))

    kls = []
    for item in ITEMS:
        for j in range(1, len(item.labels)):
            if item.labels[j] != -100:
                policy = torch.softmax(model.table[item.input_ids[j - 1]].detach(), -1)
                ref = torch.softmax(reference[item.input_ids[j - 1]], -1)
                p, q = (ref, policy) if direction == "ref_to_policy" else (policy, ref)  # KL(p ‖ q)
                kls.append(float((p * (p.log() - q.log())).sum()))
    assert stats["kl"] == pytest.approx(sum(kls) / len(kls), rel=1e-5)
    assert float(with_kl.detach()) == pytest.approx(dft_value + 0.3 * sum(kls) / len(kls), rel=1e-5)
    assert float(anchored_sft.loss(model, batch, weight, context(0.0, reference))[0].detach()) == pytest.approx(dft_value)


def test_kl_to_an_identical_reference_is_zero_and_pulls_nowhere():
    model, batch = FixedLogits(), collate(ITEMS, pad_id=0)
    weight = batch_weight(batch)
    value, stats = anchored_sft.loss(model, batch, weight, context(5.0, model.table))
    assert stats["kl"] == pytest.approx(0.0, abs=1e-7)
    value.backward()
    with_kl = model.table.grad.clone()
    model.table.grad = None
    dft.loss(model, batch, weight)[0].backward()
    torch.testing.assert_close(with_kl, model.table.grad)
