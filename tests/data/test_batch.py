import math
import random

import pytest

from tuna.data.batch import TrainBatches, collate, target_weights
from tuna.data.kinds import SEQUENCES
from tuna.data.render import IGNORE, Rendered


def items_of_lengths(lengths):
    return [Rendered(list(range(1, n + 1)), [IGNORE] + list(range(2, n + 1))) for n in lengths]


def test_collate_pads_right_with_masked_labels():
    batch = collate([Rendered([5, 6, 7], [IGNORE, 6, 7]), Rendered([8], [8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_weights_count_tokens_or_sequences():
    item = Rendered([5, 6, 7, 8], [IGNORE, IGNORE, 7, 8])
    assert target_weights(item, "token") == [0, 0, 1, 1]
    assert target_weights(item, "sequence") == [0, 0, 0.5, 0.5]
    assert target_weights(Rendered([5, 6], [5, 6]), "token") == [0, 1]  # position 0 predicts nothing


@pytest.mark.parametrize("batching", ["padded", "sorted", "packed"])
def test_batches_cover_each_epoch_and_resume_exactly(batching):
    items = items_of_lengths([3, 9, 4, 7, 2, 8, 5, 6, 3, 9])
    make = lambda seed=3: TrainBatches(items, SEQUENCES, batching=batching, batch_size=2, max_tokens=12, weighting="token",
                                       pad_id=0, seed=seed)
    stream = make()
    epoch0 = [i for _ in range(stream.batches_per_epoch) for i in stream.next_indices()]
    assert sorted(epoch0) == list(range(10))
    stream.next_indices()
    state = stream.state_dict()
    ahead = [stream.next_indices() for _ in range(7)]
    resumed = make()
    resumed.load_state_dict(state)
    assert [resumed.next_indices() for _ in range(7)] == ahead
    orders = {tuple(map(tuple, (make(seed).next_indices() for _ in range(3)))) for seed in range(6)}
    assert len(orders) > 1


def test_sorted_batches_group_similar_lengths_in_shuffled_order():
    lengths = list(range(1, 41))
    stream = TrainBatches(items_of_lengths(lengths), SEQUENCES, batching="sorted", batch_size=4, max_tokens=64,
                          weighting="token", pad_id=0, seed=0)
    batches = [stream.next_indices() for _ in range(stream.batches_per_epoch)]
    spans = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert max(spans) == 3  # consecutive lengths: the tightest possible grouping
    firsts = [min(lengths[i] for i in b) for b in batches]
    assert firsts != sorted(firsts)  # the batch order is shuffled


def test_packed_batch_holds_whole_bins_in_one_unpadded_row():
    items = items_of_lengths([7, 5, 4, 3, 1, 6])
    stream = TrainBatches(items, SEQUENCES, batching="packed", batch_size=2, max_tokens=8, weighting="token", pad_id=0, seed=0)
    assert stream.batches_per_epoch == 2  # 26 tokens fit 4 bins of 8
    batch = stream.next()
    assert set(batch) == {"input_ids", "labels", "position_ids", "weights"}
    assert batch["input_ids"].shape[0] == 1 and batch["input_ids"].shape[1] <= 16
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert all(batch["labels"][0, s] == IGNORE for s in starts)


def test_padding_fraction_of_padded_and_sorted_batches():
    lengths = [2, 8, 2, 8]
    make = lambda batching: TrainBatches(items_of_lengths(lengths), SEQUENCES, batching=batching, batch_size=2, max_tokens=8,
                                         weighting="token", pad_id=0, seed=0)
    assert make("sorted").padding_fraction() == 0.0  # [2, 2] and [8, 8]
    plan = [make("padded").next_indices() for _ in range(2)]
    computed = sum(len(b) * max(lengths[i] for i in b) for b in plan)
    assert make("padded").padding_fraction() == pytest.approx(1 - 20 / computed)
    assert make("packed").padding_fraction() == 0.0


def test_default_packing_puts_about_micro_batch_size_examples_in_each_step():
    rng = random.Random(0)
    lengths = [rng.randint(5, 150) for _ in range(400)]
    stream = TrainBatches(items_of_lengths(lengths), SEQUENCES, batching="packed_step", batch_size=8, max_tokens=256,
                          weighting="token", pad_id=0, seed=0)
    assert stream.row_tokens == math.ceil(8 * sum(lengths) / len(lengths))
    steps = [stream.next_indices() for _ in range(stream.batches_per_epoch)]
    assert sorted(i for step in steps for i in step) == list(range(400))
    assert all(sum(lengths[i] for i in step) <= stream.row_tokens for step in steps)
    counts = [len(step) for step in steps]
    assert 7.5 <= sum(counts) / len(counts) <= 8.5  # as many examples a step as padded batches of 8
    assert stream.batches_per_epoch <= 400 // 8 + 2
    batch = stream.next()
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # one row, no padding


def test_default_packing_keeps_each_steps_examples_when_accumulating():
    """micro_batch_size 4 × grad_accum 1 and 2 × 2 take the same examples each step: the step's bin is
    split into its micro-batches, balanced by tokens."""
    lengths = [random.Random(1).randint(3, 40) for _ in range(60)]
    make = lambda micro, rows: TrainBatches(items_of_lengths(lengths), SEQUENCES, batching="packed_step",
                                            batch_size=micro, max_tokens=64, weighting="token", pad_id=0, seed=2,
                                            rows_per_step=rows)
    whole, split = make(4, 1), make(2, 2)
    assert whole.row_tokens == split.row_tokens and split.batches_per_epoch == 2 * whole.batches_per_epoch
    for _ in range(whole.batches_per_epoch):
        rows = [split.next_indices(), split.next_indices()]
        assert sorted(rows[0] + rows[1]) == sorted(whole.next_indices())
        assert all(rows) and abs(sum(lengths[i] for i in rows[0]) - sum(lengths[i] for i in rows[1])) <= 40
