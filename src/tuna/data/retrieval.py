"""Synthetic key-value retrieval examples, after "From Artificial Needles to Real Haystacks" (Xiong et al. 2024).

The user message is a long list of small dictionaries of random integer keys and values followed by a
question about one key; the assistant names that key's value and the dictionary holding it, in a fixed
answer template (the paper found the template helps). Fine-tuning on these teaches long-context
retrieval without teaching facts. Every key in a list is distinct, so the answer is unique; no other
value equals the gold value. Examples are grown one dictionary at a time until the whole rendered
conversation (chat template included, as training sees it) reaches the requested token length, and
the gold dictionary sits at the requested fraction of the way through the list.
"""
from __future__ import annotations

import itertools
import random

from tqdm.auto import tqdm

from tuna.data.render import chat_text
from tuna.errors import UserError

KEY_RANGE = range(100, 10_000)  # 3-4 digit keys and values, as in the paper
GOLD_SIZE, DICT_SIZES = 3, (3, 4)
INTRO = "Below is a list of dictionaries. Every key and every value is an integer."


def question(key: int) -> str:
    return (f"What is the value of key {key}, and which dictionary is it in? Answer in this form: "
            f"The value of key {key} is <value> and it is in Dictionary [<number>].")


def answer(key: int, value: int, name: int) -> str:
    return f"The value of key {key} is {value} and it is in Dictionary [{name}]."


def dictionary_line(name: int, entries: dict[int, int]) -> str:
    return f"Dictionary [{name}] {{" + ", ".join(f"{k}: {v}" for k, v in entries.items()) + "}"


class _Keys:
    """Distinct random keys for one example."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def draw(self) -> int:
        if len(self.used) == len(KEY_RANGE):
            raise UserError(f"ran out of distinct keys ({len(KEY_RANGE)}); ask for shorter lengths")
        while (key := self.rng.choice(KEY_RANGE)) in self.used:
            pass
        self.used.add(key)
        return key


def _messages(dicts: list[dict[int, int]], gold_index: int, key: int) -> list[dict]:
    lines = "\n".join(dictionary_line(i + 1, d) for i, d in enumerate(dicts))
    return [{"role": "user", "content": f"{INTRO}\n\n{lines}\n\n{question(key)}"},
            {"role": "assistant", "content": answer(key, dicts[gold_index][key], gold_index + 1)}]


def _count(tokenizer, messages: list[dict]) -> int:
    return len(tokenizer(chat_text(tokenizer, messages), add_special_tokens=False).input_ids)


def retrieval_example(tokenizer, length: int, position: float, rng: random.Random) -> dict:
    """One example of at most `length` tokens (short of it by less than one dictionary)."""
    if not 0.0 <= position <= 1.0:
        raise UserError(f"position {position} is not a fraction in [0, 1]")
    keys, value = _Keys(rng), rng.choice(KEY_RANGE)

    def other_value() -> int:
        while (v := rng.choice(KEY_RANGE)) == value:
            pass
        return v

    def dictionary(size: int) -> dict[int, int]:
        return {keys.draw(): other_value() for _ in range(size)}

    gold = dictionary(GOLD_SIZE)
    key = rng.choice(list(gold))
    gold[key] = value
    minimum = _count(tokenizer, _messages([gold], 0, key))
    if minimum > length:
        raise UserError(f"length {length} is too short: the question and one dictionary already take {minimum} tokens")

    distractors, estimate = [], minimum
    while estimate < length:  # grow by each line's own token count, then trim against the exact count
        distractors.append(dictionary(rng.choice(DICT_SIZES)))
        line = "\n" + dictionary_line(len(distractors), distractors[-1])
        estimate += len(tokenizer(line, add_special_tokens=False).input_ids)
    while True:
        gold_index = round(position * len(distractors))
        dicts = distractors[:gold_index] + [gold] + distractors[gold_index:]
        messages = _messages(dicts, gold_index, key)
        tokens = _count(tokenizer, messages)
        if tokens <= length or not distractors:
            break
        distractors.pop()
    return {"messages": messages, "answer": str(value), "key": key, "position": position,
            "gold_dictionary": gold_index + 1, "dictionaries": len(dicts), "target_tokens": length, "tokens": tokens}


def retrieval_examples(tokenizer, count: int, lengths: list[int], positions: list[float], seed: int = 0,
                       progress: bool = False) -> list[dict]:
    """`count` examples cycling through every (length, position) pair, so each pair is equally common."""
    rng = random.Random(seed)
    cells = list(itertools.product(lengths, positions))
    return [retrieval_example(tokenizer, *cells[i % len(cells)], rng)
            for i in tqdm(range(count), desc="retrieval examples", delay=3, disable=not progress)]
