import random

import pytest
import torch

from tuna.data.batch import collate, target_weights
from tuna.data.packing import best_fit_decreasing, collate_packed
from tuna.data.render import IGNORE, Rendered
from tuna.models.attention import NAME as PACKED_ATTENTION
from tuna.models.attention import document_spans, use_packed_attention
from tuna.data.kinds import SEQUENCES
from tuna.objectives.sft import loss

batch_weight = SEQUENCES.batch_weight


def test_best_fit_decreasing_fills_bins_without_overflow():
    rng = random.Random(0)
    lengths = [rng.randint(1, 64) for _ in range(300)]
    bins = best_fit_decreasing(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(300))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    lower_bound = -(-sum(lengths) // 64)
    assert len(bins) <= lower_bound * 1.05 + 1  # BFD's near-optimal packing
    assert best_fit_decreasing([6, 4, 3, 1], 8) == [[0], [1, 2, 3]]  # first fit would put the 1 beside the 6
    with pytest.raises(ValueError):
        best_fit_decreasing([9], 8)


def test_document_spans_split_where_positions_restart():
    assert document_spans(torch.tensor([0, 1, 2, 0, 1, 0])) == [(0, 3), (3, 5), (5, 6)]
    assert document_spans(torch.tensor([0, 1, 2])) == [(0, 3)]


def random_items(vocab: int, lengths: list[int], seed: int = 0) -> list[Rendered]:
    g = torch.Generator().manual_seed(seed)
    items = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        prompt = n // 3
        items.append(Rendered(ids, [IGNORE] * prompt + ids[prompt:]))
    return items


def loss_and_grads(model, batches: list[dict], weighting_total: float):
    model.zero_grad()
    total = 0.0
    for batch in batches:
        value, _ = loss(model, batch, weighting_total)
        value.backward()
        total += float(value.detach())
    return total, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("attention", ["eager", "sdpa", PACKED_ATTENTION])
@pytest.mark.parametrize("weighting", ["token", "sequence"])
def test_packed_loss_and_gradients_equal_one_by_one(tiny_model_dir, attention, weighting):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    items = random_items(model.config.vocab_size, [17, 5, 30, 9, 2, 24])
    singles = [collate([item], pad_id=0, weighting=weighting) for item in items]
    total = sum(batch_weight(b) for b in singles)
    expected, expected_grads = loss_and_grads(model, singles, total)

    if attention == PACKED_ATTENTION:
        assert use_packed_attention(model) == PACKED_ATTENTION
    else:
        model.set_attn_implementation(attention)
    packed = collate_packed(items, [target_weights(item, weighting) for item in items])
    assert batch_weight(packed) == pytest.approx(total)
    got, grads = loss_and_grads(model, [packed], total)
    assert got == pytest.approx(expected, abs=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_packed_attention_keeps_padded_batches_and_generation_exact(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    items = random_items(model.config.vocab_size, [12, 5])
    batch = collate(items, pad_id=0)
    with torch.no_grad():
        before = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        prompt = batch["input_ids"][:1, :6]
        greedy_before = model.generate(prompt, max_new_tokens=5, do_sample=False)
        use_packed_attention(model)
        after = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        greedy_after = model.generate(prompt, max_new_tokens=5, do_sample=False)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(after[real], before[real], atol=1e-6, rtol=1e-5)
    assert greedy_after.tolist() == greedy_before.tolist()


def test_the_default_batching_is_exact(tiny_model_dir):
    """The default (`auto`, packed by step) on a step's examples: the loss and gradients of the packed row
    equal those of the same examples right-padded."""
    from transformers import AutoModelForCausalLM

    from tuna.config import validate_recipe
    from tuna.data.batch import TrainBatches

    recipe = validate_recipe({"model": str(tiny_model_dir)})
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    items = random_items(model.config.vocab_size, [17, 5, 30, 9, 2, 24, 11, 40, 3, 16])
    stream = TrainBatches(items, SEQUENCES, batching=recipe.batching, batch_size=4, max_tokens=64, weighting="token",
                          pad_id=0, seed=0)
    step = stream.next_indices()
    assert len(step) > 1
    padded = collate([items[i] for i in step], pad_id=0)
    expected, expected_grads = loss_and_grads(model, [padded], batch_weight(padded))
    stream.load_state_dict({"epoch": 0, "cursor": 0})
    packed = stream.next()
    assert packed["input_ids"].shape == (1, sum(len(items[i].input_ids) for i in step))
    use_packed_attention(model)
    got, grads = loss_and_grads(model, [packed], batch_weight(packed))
    assert got == pytest.approx(expected, abs=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=1e-5, rtol=1e-4, msg=name)
