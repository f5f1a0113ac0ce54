"""QFFT: the training split trains on responses with the questions removed; the held-out split keeps them."""
from __future__ import annotations

import pytest

from tests.conftest import write_jsonl
from tuna.config import validate_recipe
from tuna.data.dataset import load_splits
from tuna.data.question_free import without_questions
from tuna.errors import UserError


def chat(i):
    return {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"question {i}?"},
                         {"role": "assistant", "content": f"answer {i}"}]}


def test_questions_go_and_responses_and_system_turns_stay():
    kept = without_questions([chat(1)], "auto")
    assert kept == [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "answer 1"}]}]
    assert without_questions([{"prompt": "Q: 2+2?", "completion": " 4"}], "auto") == [{"prompt": "", "completion": " 4"}]
    assert without_questions([{"instruction": "add", "input": "2 2", "output": "4"}], "auto") == \
        [{"messages": [{"role": "assistant", "content": "4"}]}]
    with pytest.raises(UserError, match="drop_question needs records with a question"):
        without_questions([{"text": "plain"}], "auto")


def test_only_the_training_split_loses_its_questions(tmp_path, tiny_tokenizer):
    data = write_jsonl(tmp_path / "chat.jsonl", [chat(i) for i in range(10)])
    recipe = validate_recipe({"data": {"path": str(data), "eval_split": 0.2, "drop_question": True}})
    splits = load_splits(recipe.data, tiny_tokenizer, seed=0)
    decode = lambda item: tiny_tokenizer.decode(item.input_ids)
    trained = lambda item: tiny_tokenizer.decode([t for t in item.labels if t != -100])
    assert all("question" not in decode(item) and "answer" in trained(item) for item in splits.train)
    assert all("question" in decode(item) for item in splits.eval)
    plain = load_splits(validate_recipe({"data": {"path": str(data), "eval_split": 0.2}}).data, tiny_tokenizer, seed=0)
    assert [trained(a) for a in splits.train] == [trained(b) for b in plain.train]  # the same responses train


def test_drop_question_trains_and_is_refused_where_it_cannot_apply(tiny_recipe):
    from tuna.train.loop import train

    assert train(tiny_recipe(data={"drop_question": True}, train={"max_steps": 2}), progress=False).steps == 2
    with pytest.raises(UserError, match="data.drop_question does not apply to objective dpo"):
        validate_recipe({"objective": "dpo", "data": {"drop_question": True}})
