import pytest
import torch

from tuna.data.batch import collate
from tuna.objectives.dft import loss as dft_loss
from tuna.data.kinds import SEQUENCES

batch_weight = SEQUENCES.batch_weight
from tests.objectives.test_sft import ITEMS, FixedLogits, hand_losses


def test_dft_weights_each_token_loss_by_its_probability():
    model = FixedLogits()
    per_token = [l for item in ITEMS for l in hand_losses(model, item)]
    expected = sum(torch.exp(torch.tensor(-l)).item() * l for l in per_token) / len(per_token)
    batch = collate(ITEMS, pad_id=0)
    value, stats = dft_loss(model, batch, batch_weight(batch))
    assert float(value.detach()) == pytest.approx(expected, rel=1e-6)
    assert stats["nll"] == pytest.approx(sum(per_token) / len(per_token), rel=1e-6)


def test_dft_gradient_is_minus_the_gradient_of_the_token_probabilities():
    """d/dθ [sg(p)·(−log p)] = −∇p: the stop-gradient weight must not be differentiated."""
    batch = collate(ITEMS, pad_id=0)
    model = FixedLogits()
    dft_loss(model, batch, batch_weight(batch))[0].backward()
    got = model.table.grad.clone()

    model.table.grad = None
    log_probs = torch.log_softmax(model.table[batch["input_ids"][:, :-1]], -1)
    targets = batch["labels"][:, 1:]
    picked = log_probs.gather(-1, targets.clamp(min=0)[..., None])[..., 0].exp()
    (-(picked * batch["weights"][:, 1:]).sum() / batch_weight(batch)).backward()
    torch.testing.assert_close(got, model.table.grad)
