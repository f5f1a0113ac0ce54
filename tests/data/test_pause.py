import random

import pytest

from tests.conftest import CORPUS, write_jsonl
from tuna.config import PauseConfig, validate_recipe
from tuna.data.dataset import load_splits
from tuna.data.pause import PauseStats, add_pauses, insert_pauses
from tuna.data.render import IGNORE, render_records
from tuna.errors import UserError

EVERY = 16
MARKER = "<pause>"
BREAK = "\n\n"
PAUSE = PauseConfig(every=EVERY, text=MARKER)
WORDS = " ".join(CORPUS).split()
SHORT = "hello world" + BREAK + "Paris"  # paragraphs, but fewer than EVERY tokens


def paragraph(n_words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def document(n_paragraphs: int, seed: int, lengths=(2, 12)) -> str:
    rng = random.Random(seed)
    return BREAK.join(paragraph(rng.randint(*lengths), rng) for _ in range(n_paragraphs))


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def trained_labels(rendered) -> list[list[int]]:
    return [[label for label in item.labels if label != IGNORE] for item in rendered]


@pytest.mark.parametrize("seed", range(4))
def test_pauses_close_segments_at_the_first_paragraph_break_past_every_tokens(tiny_tokenizer, seed):
    text = document(30, seed)
    paused, count = insert_pauses(text, tiny_tokenizer, EVERY, MARKER)
    segments = paused.split(BREAK + MARKER + BREAK)
    assert count == len(segments) - 1 == paused.count(MARKER) > 0
    assert BREAK.join(segments) == text  # markers sit only at paragraph breaks; nothing else moved
    assert insert_pauses(text + BREAK, tiny_tokenizer, EVERY, MARKER) == (paused + BREAK, count)  # none at the end
    for segment in segments[:-1]:
        assert n_tokens(tiny_tokenizer, segment) >= EVERY
        shorter = segment.rsplit(BREAK, 1)[0] if BREAK in segment else ""
        assert n_tokens(tiny_tokenizer, shorter) < EVERY  # the pause came at the first break that allowed it


def test_short_inputs_and_unbroken_paragraphs_are_left_alone(tiny_tokenizer):
    assert n_tokens(tiny_tokenizer, SHORT) < EVERY
    unbroken = paragraph(4 * EVERY, random.Random(0))
    for text in (SHORT, unbroken, SHORT + BREAK):
        assert insert_pauses(text, tiny_tokenizer, EVERY, MARKER) == (text, 0)


def records_of_every_format(long: str, short: str) -> dict[str, list[dict]]:
    return {
        "messages": [{"messages": [{"role": "system", "content": long}, {"role": "user", "content": long},
                                   {"role": "assistant", "content": long}, {"role": "user", "content": short},
                                   {"role": "assistant", "content": long}]},
                     {"messages": [{"role": "user", "content": short}, {"role": "assistant", "content": long}]}],
        "instruction": [{"instruction": long, "input": long, "output": long},
                        {"instruction": short, "input": "", "output": long}],
        "prompt_completion": [{"prompt": long, "completion": long}, {"prompt": short, "completion": long}],
    }


def inputs_and_outputs(record: dict, fmt: str) -> tuple[list[str], list[str]]:
    if fmt == "messages":
        turns = record["messages"]
        return ([m["content"] for m in turns if m["role"] != "assistant"],
                [m["content"] for m in turns if m["role"] == "assistant"])
    if fmt == "instruction":
        return [record["instruction"], record["input"]], [record["output"]]
    return [record["prompt"]], [record["completion"]]


@pytest.mark.parametrize("fmt", ["messages", "instruction", "prompt_completion"])
def test_only_inputs_get_pauses_and_the_trained_tokens_stay_the_same(tiny_tokenizer, fmt):
    long = document(12, seed=1)
    records = records_of_every_format(long, SHORT)[fmt]
    paused, stats = add_pauses(records, "auto", tiny_tokenizer, PAUSE)
    long_paused, per_long = insert_pauses(long, tiny_tokenizer, EVERY, MARKER)

    for before, after in zip(records, paused):
        inputs_before, outputs_before = inputs_and_outputs(before, fmt)
        inputs_after, outputs_after = inputs_and_outputs(after, fmt)
        assert outputs_after == outputs_before
        assert inputs_after == [long_paused if text == long else text for text in inputs_before]
    assert records == records_of_every_format(long, SHORT)[fmt]  # the originals are not modified
    expected_inserted = sum(inputs_and_outputs(r, fmt)[0].count(long) for r in records) * per_long
    assert stats == PauseStats(inserted=expected_inserted, examples=1)

    options = dict(train_on="completion", max_tokens=10_000, overflow="truncate")
    plain, _ = render_records(records, fmt, tiny_tokenizer, **options)
    with_pauses, _ = render_records(paused, fmt, tiny_tokenizer, **options)
    assert plain[0].input_ids != with_pauses[0].input_ids
    assert trained_labels(with_pauses) == trained_labels(plain)


def test_plain_text_data_has_no_input_to_pause(tiny_tokenizer):
    with pytest.raises(UserError, match="plain `text` data has none"):
        add_pauses([{"text": document(12, seed=0)}], "auto", tiny_tokenizer, PAUSE)


def test_both_splits_get_pauses_and_report_them(tiny_tokenizer, tmp_path):
    rng = random.Random(0)
    n_paragraphs = 4
    long = BREAK.join(paragraph(2 * EVERY, rng) for _ in range(n_paragraphs))  # every paragraph closes a segment
    rows = lambda n_long, n_short: ([{"prompt": long, "completion": "yes"}] * n_long
                                    + [{"prompt": "short", "completion": "no"}] * n_short)
    train_file = write_jsonl(tmp_path / "train.jsonl", rows(3, 2))
    eval_file = write_jsonl(tmp_path / "eval.jsonl", rows(1, 1))
    recipe = validate_recipe({"data": {"path": str(train_file), "eval_split": str(eval_file), "max_tokens": 4096,
                                       "pause_tokens": {"every": EVERY, "text": MARKER}}})
    splits = load_splits(recipe.data, tiny_tokenizer, seed=0)
    assert PauseStats(inserted=3 * (n_paragraphs - 1), examples=3).summary() in splits.train_stats.notes
    assert PauseStats(inserted=n_paragraphs - 1, examples=1).summary() in splits.eval_stats.notes
    assert tiny_tokenizer.decode(splits.eval[0].input_ids).count(MARKER) == n_paragraphs - 1
