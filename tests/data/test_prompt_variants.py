"""PAFT: each step draws, per example, one of the paraphrased instructions (or its own), reproducibly."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.conftest import write_jsonl
from tuna.config import validate_recipe
from tuna.data.batch import TrainBatches
from tuna.data.dataset import load_splits
from tuna.data.kinds import SEQUENCES
from tuna.errors import UserError

VARIANTS = ["Add the two numbers.", "Compute the sum below.", "What do these add up to?"]


def instruction_data(tmp_path):
    rows = [{"instruction": "Sum these.", "input": f"{i} {i}", "output": f"{2 * i}"} for i in range(12)]
    return write_jsonl(tmp_path / "sums.jsonl", rows)


def batches_of(splits, tokenizer, seed=0):
    return TrainBatches(splits.train, SEQUENCES, batching="padded", batch_size=4, max_tokens=256, weighting="token",
                        pad_id=tokenizer.pad_token_id, seed=seed, versions=splits.train_versions)


def instructions_in(batch, tokenizer) -> list[str]:
    texts = tokenizer.batch_decode(batch["input_ids"])
    found = []
    for text in texts:
        found.append(next((v for v in ["Sum these.", *VARIANTS] if v in text), None))
    return found


def test_every_step_draws_an_instruction_per_example_and_a_resume_draws_the_same(tmp_path, tiny_tokenizer):
    variants = tmp_path / "variants.json"
    variants.write_text(json.dumps(VARIANTS))
    recipe = validate_recipe({"data": {"path": str(instruction_data(tmp_path)), "eval_split": 0.0,
                                       "prompt_variants": str(variants)}})
    splits = load_splits(recipe.data, tiny_tokenizer, seed=0)
    assert len(splits.train_versions) == len(splits.train) and len(splits.train_versions[0]) == 4
    stream = batches_of(splits, tiny_tokenizer)
    seen, states = [], []
    for _ in range(30):
        states.append(stream.state_dict())
        seen.append(instructions_in(stream.next(), tiny_tokenizer))
    counts = Counter(i for step in seen for i in step)
    assert None not in counts and set(counts) == {"Sum these.", *VARIANTS}  # all four appear
    assert min(counts.values()) > 15  # about 30 of each of 120 draws
    assert len({tuple(s) for s in seen}) > 20  # the draw changes from step to step
    resumed = batches_of(splits, tiny_tokenizer)
    resumed.load_state_dict(states[10])  # as a checkpoint after 10 steps holds it
    assert [instructions_in(resumed.next(), tiny_tokenizer) for _ in range(20)] == seen[10:]
    answers = lambda batch: [tiny_tokenizer.decode([t for t in row if t != -100]) for row in batch["labels"].tolist()]
    plain = TrainBatches(splits.train, SEQUENCES, batching="padded", batch_size=4, max_tokens=256, weighting="token",
                         pad_id=tiny_tokenizer.pad_token_id, seed=0)
    again = batches_of(splits, tiny_tokenizer)
    for _ in range(6):
        assert answers(again.next()) == answers(plain.next())  # same examples in the same order, only reworded


def test_chat_records_take_the_variant_as_their_system_turn_and_others_are_refused(tmp_path, tiny_tokenizer):
    variants = tmp_path / "variants.txt"
    variants.write_text("\n".join(VARIANTS) + "\n")
    chat = [{"messages": [{"role": "system", "content": "Sum these."}, {"role": "user", "content": f"{i} {i}"},
                          {"role": "assistant", "content": f"{2 * i}"}]} for i in range(8)]
    recipe = validate_recipe({"data": {"path": str(write_jsonl(tmp_path / "chat.jsonl", chat)), "eval_split": 0.0,
                                       "prompt_variants": str(variants)}})
    splits = load_splits(recipe.data, tiny_tokenizer, seed=0)
    assert VARIANTS[1] in tiny_tokenizer.decode(splits.train_versions[0][2].input_ids)
    no_system = write_jsonl(tmp_path / "plain.jsonl", [{"messages": m["messages"][1:]} for m in chat])
    with pytest.raises(UserError, match="line 1: data.prompt_variants replaces a chat record's leading system turn"):
        load_splits(validate_recipe({"data": {"path": str(no_system), "prompt_variants": str(variants)}}).data,
                    tiny_tokenizer, seed=0)
    with pytest.raises(UserError, match="choose one"):
        validate_recipe({"data": {"drop_question": True, "prompt_variants": str(variants)}})


def test_a_paft_run_resumed_takes_the_same_steps(tmp_path, tiny_recipe):
    from tuna.rundir import read_metrics
    from tuna.train.loop import train

    variants = tmp_path / "variants.json"
    variants.write_text(json.dumps(VARIANTS))
    data = {"path": str(instruction_data(tmp_path)), "eval_split": 0.0, "prompt_variants": str(variants)}
    knobs = dict(data=data, eval={"every": 0}, train={"schedule": "constant", "warmup_ratio": 0.0, "save_every": 2})
    losses = lambda run: [r["train/loss"] for r in read_metrics(run / "metrics.jsonl")]
    train(tiny_recipe(**knobs, output_dir=str(tmp_path / "whole")), progress=False)
    stopped = tiny_recipe(**{**knobs, "train": {**knobs["train"], "max_steps": 4}}, output_dir=str(tmp_path / "cut"))
    train(stopped, progress=False)
    stopped.train.max_steps = 6
    train(stopped, resume=True, progress=False)
    assert losses(tmp_path / "cut") == pytest.approx(losses(tmp_path / "whole"), abs=1e-6)
