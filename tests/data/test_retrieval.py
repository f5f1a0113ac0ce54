"""Synthetic key-value retrieval: requested lengths, a unique answer, the gold dictionary where asked."""
import re

import pytest

from tuna.data.render import chat_text
from tuna.data.retrieval import retrieval_examples
from tuna.errors import UserError

LINE = re.compile(r"^Dictionary \[(\d+)\] \{(.*)\}$", re.M)


def parse(example):
    """(dictionaries by name, asked key) read back from the user message."""
    user = example["messages"][0]["content"]
    dicts = {int(name): dict(map(int, pair.split(": ")) for pair in body.split(", ")) for name, body in LINE.findall(user)}
    key = int(re.search(r"What is the value of key (\d+)", user).group(1))
    return dicts, key


def token_count(tokenizer, example):
    return len(tokenizer(chat_text(tokenizer, example["messages"]), add_special_tokens=False).input_ids)


def test_examples_fill_the_requested_length_to_within_one_dictionary(tiny_tokenizer):
    lengths = [600, 1200]
    for example in retrieval_examples(tiny_tokenizer, 6, lengths, [0.0, 0.5, 1.0], seed=3):
        tokens = token_count(tiny_tokenizer, example)
        longest_line = max(len(tiny_tokenizer("\n" + line).input_ids)
                           for line in example["messages"][0]["content"].splitlines() if line.startswith("Dictionary"))
        assert example["target_tokens"] in lengths and example["tokens"] == tokens
        assert example["target_tokens"] - longest_line <= tokens <= example["target_tokens"]


def test_the_answer_is_the_value_of_the_asked_key_in_the_dictionary_at_the_position(tiny_tokenizer):
    positions = [0.0, 0.25, 0.5, 0.75, 1.0]
    examples = retrieval_examples(tiny_tokenizer, 10, [900], positions, seed=1)
    assert [e["position"] for e in examples] == positions * 2
    for example in examples:
        dicts, key = parse(example)
        holders = [name for name, d in dicts.items() if key in d]
        assert len(holders) == 1  # the asked key appears in exactly one dictionary
        name = holders[0]
        value = dicts[name][key]
        assert sum(v == value for d in dicts.values() for v in d.values()) == 1
        assert example["messages"][1]["content"] == f"The value of key {key} is {value} and it is in Dictionary [{name}]."
        assert example["answer"] == str(value) and example["gold_dictionary"] == name
        assert sorted(dicts) == list(range(1, len(dicts) + 1)) and len(dicts) > 10
        assert name - 1 == round(example["position"] * (len(dicts) - 1))


def test_same_seed_same_examples_other_seed_other_examples(tiny_tokenizer):
    make = lambda seed: retrieval_examples(tiny_tokenizer, 2, [500], [0.5], seed=seed)
    assert make(0) == make(0)
    assert make(0) != make(1)


def test_length_too_short_for_the_question_is_refused(tiny_tokenizer):
    with pytest.raises(UserError, match="length 50 is too short"):
        retrieval_examples(tiny_tokenizer, 1, [50], [0.0])


def test_keys_stay_distinct_and_the_gold_value_unique_even_from_a_small_range(tiny_tokenizer, monkeypatch):
    monkeypatch.setattr("tuna.data.retrieval.KEY_RANGE", range(100, 250))  # collisions would be common here
    for example in retrieval_examples(tiny_tokenizer, 6, [1500], [0.5], seed=2):
        dicts, key = parse(example)
        keys = [k for d in dicts.values() for k in d]
        values = [v for d in dicts.values() for v in d.values()]
        assert len(keys) == len(set(keys)) and values.count(int(example["answer"])) == 1
    monkeypatch.setattr("tuna.data.retrieval.KEY_RANGE", range(100, 110))
    with pytest.raises(UserError, match="ran out of distinct keys"):
        retrieval_examples(tiny_tokenizer, 1, [900], [0.5])
