import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from tuna.data.mask_thought import mask_thought, mask_token_id
from tuna.data.render import IGNORE
from tuna.objectives import REGISTRY as OBJECTIVES
from tuna.train.loop import train

MASK = 3
ROWS, PROMPT, RESPONSE, PAD = 64, 20, 200, 15


def make_batch() -> dict[str, torch.Tensor]:
    """Prompt (no labels), response (labels = inputs), right padding; no input equals MASK."""
    g = torch.Generator().manual_seed(0)
    width = PROMPT + RESPONSE + PAD
    input_ids = torch.randint(10, 400, (ROWS, width), generator=g)
    labels = input_ids.clone()
    labels[:, :PROMPT] = IGNORE
    attention = torch.ones_like(input_ids)
    lengths = PROMPT + RESPONSE + torch.randint(-10, PAD + 1, (ROWS,), generator=g)  # ragged rows
    for row, n in enumerate(lengths.tolist()):
        input_ids[row, n:], labels[row, n:], attention[row, n:] = 0, IGNORE, 0
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def masked(batch, ratio, seed=0):
    original = {k: v.clone() for k, v in batch.items()}
    out = mask_thought(batch, ratio, MASK, torch.Generator().manual_seed(seed))
    assert all(torch.equal(batch[k], original[k]) for k in batch)  # the input batch is not modified
    return out


def test_only_labelled_positions_are_masked_and_labels_stay():
    batch = make_batch()
    out = masked(batch, 0.3)
    changed = out["input_ids"] != batch["input_ids"]
    response = batch["labels"] != IGNORE
    assert changed.any()
    assert not (changed & ~response).any()  # prompt and padding never change
    assert (out["input_ids"][changed] == MASK).all()
    assert torch.equal(out["input_ids"][:, :PROMPT], batch["input_ids"][:, :PROMPT])
    assert torch.equal(out["labels"], batch["labels"])
    assert torch.equal(out["attention_mask"], batch["attention_mask"])


def test_the_masked_fraction_matches_the_ratio():
    batch = make_batch()
    response = batch["labels"] != IGNORE
    n = int(response.sum())
    assert n > 10_000
    for ratio in (0.1, 0.3, 0.6):
        fraction = float((masked(batch, ratio)["input_ids"][response] == MASK).float().mean())
        # each response token is masked independently: the fraction is Binomial(n, ratio) / n, whose
        # standard deviation is sqrt(ratio (1 - ratio) / n) < 0.005 here; 6 of them is never exceeded
        # by chance in practice (two-sided probability ~2e-9).
        assert abs(fraction - ratio) < 6 * math.sqrt(ratio * (1 - ratio) / n), ratio


def test_ratio_zero_masks_nothing():
    batch = make_batch()
    assert torch.equal(masked(batch, 0.0)["input_ids"], batch["input_ids"])


def test_the_generator_seed_decides_the_mask():
    batch = make_batch()
    first, second, other = masked(batch, 0.3, seed=7), masked(batch, 0.3, seed=7), masked(batch, 0.3, seed=8)
    assert torch.equal(first["input_ids"], second["input_ids"])
    assert not torch.equal(first["input_ids"], other["input_ids"])


@pytest.mark.parametrize("ids, expected", [
    ((5, 6, 7), 5),           # the mask token first
    ((None, 6, 7), 6),        # else the unknown token
    ((None, None, 7), 7),     # else padding
    ((0, 6, 7), 0),           # id 0 is a real token, not "missing"
    ((None, None, 0), 0),
])
def test_mask_token_fallback_order(ids, expected):
    mask, unk, pad = ids
    assert mask_token_id(SimpleNamespace(mask_token_id=mask, unk_token_id=unk, pad_token_id=pad)) == expected


def test_a_tokenizer_without_any_of_them_is_refused():
    with pytest.raises(ValueError, match="no mask, unknown or padding token"):
        mask_token_id(SimpleNamespace(mask_token_id=None, unk_token_id=None, pad_token_id=None))


def test_the_tiny_tokenizer_masks_with_padding(tiny_tokenizer):
    assert tiny_tokenizer.mask_token_id is None and tiny_tokenizer.unk_token_id is None
    assert mask_token_id(tiny_tokenizer) == tiny_tokenizer.pad_token_id


def test_training_sees_masked_responses(tiny_recipe, tiny_tokenizer, monkeypatch):
    real, seen = OBJECTIVES["sft"], []

    def spy(model, batch, total, ctx):
        seen.append({k: v.clone() for k, v in batch.items()})
        return real.loss(model, batch, total, ctx)

    monkeypatch.setitem(OBJECTIVES, "sft", dataclasses.replace(real, loss=spy))
    train(tiny_recipe(data={"mask_thought_ratio": 0.5}, train={"max_steps": 2}, eval={"every": 0}), progress=False)
    assert len(seen) == 2
    pad = tiny_tokenizer.pad_token_id  # the tiny tokenizer's mask token
    for batch in seen:
        # the padding id inside the attended text can only be a mask, and only where a label is
        attended = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))  # packed rows: all of it
        masked_here = (batch["input_ids"] == pad) & (attended == 1)
        assert masked_here.any()
        assert (batch["labels"][masked_here] != IGNORE).all()
        # the labels keep the real tokens
        assert not (batch["labels"] == pad).any()
