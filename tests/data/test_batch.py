from tuna.data.batch import EpochSampler, collate
from tuna.data.render import IGNORE, Rendered


def test_collate_pads_right_with_masked_labels():
    batch = collate([Rendered([5, 6, 7], [IGNORE, 6, 7]), Rendered([8], [8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_sampler_covers_each_epoch_and_resumes_exactly():
    sampler = EpochSampler(size=10, batch_size=4, seed=3)
    epoch0 = [i for _ in range(3) for i in sampler.next_indices()]
    assert sorted(epoch0) == list(range(10))
    sampler.next_indices()
    state = sampler.state_dict()
    ahead = [sampler.next_indices() for _ in range(5)]
    resumed = EpochSampler(size=10, batch_size=4, seed=3)
    resumed.load_state_dict(state)
    assert [resumed.next_indices() for _ in range(5)] == ahead
    assert EpochSampler(10, 4, seed=4).next_indices() != EpochSampler(10, 4, seed=3).next_indices()
