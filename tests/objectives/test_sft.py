from types import SimpleNamespace

import pytest
import torch

from tuna.data.batch import collate
from tuna.data.render import IGNORE, Rendered
from tuna.data.kinds import SEQUENCES
from tuna.objectives.sft import loss

batch_weight = SEQUENCES.batch_weight

VOCAB = 5


class FixedLogits(torch.nn.Module):
    """A 'model' whose next-token distribution depends only on the current token, from a fixed table."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(0)))

    def forward(self, input_ids, **_):
        return SimpleNamespace(logits=self.table[input_ids])


def nll(model, current: int, following: int) -> float:
    return -float(torch.log_softmax(model.table[current].detach(), -1)[following])


def hand_losses(model, item: Rendered) -> list[float]:
    return [nll(model, item.input_ids[j - 1], item.labels[j]) for j in range(1, len(item.labels))
            if item.labels[j] != IGNORE]


ITEMS = [Rendered([1, 2, 3, 4, 0, 1], [IGNORE, IGNORE, 3, 4, 0, 1]),  # 4 targets
         Rendered([2, 2], [IGNORE, 2]),                                # 1 target
         Rendered([3, 1, 4], [3, 1, 4])]                               # 2 targets (position 0 predicts nothing)


@pytest.mark.parametrize("weighting", ["token", "sequence"])
def test_loss_weighting_matches_hand_computation_under_accumulation(weighting):
    model = FixedLogits()
    per_item = [hand_losses(model, item) for item in ITEMS]
    by_token = sum(map(sum, per_item)) / sum(map(len, per_item))
    by_sequence = sum(sum(losses) / len(losses) for losses in per_item) / len(per_item)
    assert abs(by_token - by_sequence) > 1e-2  # the data tells the two weightings apart
    expected = by_token if weighting == "token" else by_sequence
    for split in ([ITEMS], [ITEMS[:1], ITEMS[1:]], [[i] for i in ITEMS]):  # one micro-batch, or accumulated
        micro = [collate(part, pad_id=0, weighting=weighting) for part in split]
        step_weight = sum(batch_weight(b) for b in micro)
        got = sum(float(loss(model, b, step_weight)[0].detach()) for b in micro)
        assert got == pytest.approx(expected, rel=1e-6)
