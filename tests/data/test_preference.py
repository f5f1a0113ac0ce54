import pytest

from tuna.config import validate_recipe
from tuna.data.batch import TrainBatches
from tuna.data.preference import collate_pairs
from tuna.data.kinds import PAIRS
from tuna.data.dataset import load_splits
from tuna.data.formats import detect_format
from tuna.data.preference import Pair, render_pairs
from tuna.data.render import IGNORE, Rendered
from tuna.errors import UserError
from tests.conftest import write_jsonl

PAIR = {"prompt": "what is the capital of France?", "chosen": "Paris", "rejected": "March"}


def answer_text(tokenizer, item: Rendered) -> str:
    return tokenizer.decode([t for t in item.labels if t != IGNORE])


def render(records, tokenizer, max_tokens=512, overflow="truncate"):
    return render_pairs(records, tokenizer, max_tokens=max_tokens, overflow=overflow)


def test_string_pairs_are_detected_and_templated_with_labels_on_the_answer_only(tiny_tokenizer):
    assert detect_format([PAIR]) == "preference"
    (pair,), stats = render([PAIR], tiny_tokenizer)
    assert answer_text(tiny_tokenizer, pair.chosen) == "Paris<|im_end|>"
    assert answer_text(tiny_tokenizer, pair.rejected) == "March<|im_end|>"
    text = tiny_tokenizer.decode(pair.chosen.input_ids)
    assert "<|im_start|>user\nwhat is the capital of France?<|im_end|>" in text  # the chat template was applied
    first_label = next(j for j, t in enumerate(pair.chosen.labels) if t != IGNORE)
    assert pair.chosen.input_ids[:first_label] == pair.rejected.input_ids[:first_label]  # the same prompt
    assert stats.kept == 1


def test_conversational_pairs_explicit_or_implicit_prompt_render_like_strings(tiny_tokenizer):
    user = [{"role": "user", "content": PAIR["prompt"]}]
    answer = lambda text: [{"role": "assistant", "content": text}]
    explicit = {"prompt": user, "chosen": answer("Paris"), "rejected": answer("March")}
    implicit = {"chosen": user + answer("Paris"), "rejected": user + answer("March")}
    expected = render([PAIR], tiny_tokenizer)[0]
    assert render([explicit], tiny_tokenizer)[0] == expected
    assert render([implicit], tiny_tokenizer)[0] == expected


def test_earlier_assistant_turns_of_the_prompt_carry_no_label(tiny_tokenizer):
    history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"},
               {"role": "user", "content": "what is the capital of France?"}]
    record = {"chosen": history + [{"role": "assistant", "content": "Paris"}],
              "rejected": history + [{"role": "assistant", "content": "March"}]}
    (pair,), _ = render([record], tiny_tokenizer)
    assert answer_text(tiny_tokenizer, pair.chosen) == "Paris<|im_end|>"


def test_identical_pairs_are_dropped_and_counted_in_the_summary(tiny_tokenizer, tmp_path):
    same = {**PAIR, "rejected": PAIR["chosen"]}
    rows = [PAIR, same, PAIR, same, same]
    pairs, stats = render(rows, tiny_tokenizer)
    assert len(pairs) == 2 and "3 dropped with identical chosen and rejected" in stats.summary()

    recipe = validate_recipe({"data": {"path": str(write_jsonl(tmp_path / "p.jsonl", rows)), "eval_split": 0},
                              "objective": "dpo"})
    splits = load_splits(recipe.data, tiny_tokenizer, seed=0, kind=PAIRS)
    assert splits.train_stats.summary() == "2 kept, 3 dropped with identical chosen and rejected"


def test_overflow_truncates_both_sequences_or_drops_the_pair(tiny_tokenizer):
    long_answer = {**PAIR, "rejected": "March " * 40}
    (full,), _ = render([long_answer], tiny_tokenizer)
    limit = len(full.chosen.input_ids) + 2  # the chosen sequence fits, the rejected one does not
    (cut,), stats = render([long_answer], tiny_tokenizer, max_tokens=limit)
    assert stats.truncated == 1 and cut.chosen == full.chosen and len(cut.rejected.input_ids) == limit
    pairs, stats = render([long_answer, PAIR], tiny_tokenizer, max_tokens=limit, overflow="drop")
    assert len(pairs) == 1 and stats.dropped_overlong == 1


def test_pairs_collate_chosen_rows_then_rejected_rows_with_their_reference_logps():
    pairs = [Pair(Rendered([1, 2, 3], [IGNORE, 2, 3]), Rendered([1, 4], [IGNORE, 4]), (-1.0, -2.0)),
             Pair(Rendered([5, 6], [IGNORE, 6]), Rendered([5, 7, 8, 9], [IGNORE, 7, 8, 9]), (-3.0, -4.0))]
    batch = collate_pairs(pairs, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [5, 6, 0, 0], [1, 4, 0, 0], [5, 7, 8, 9]]
    assert batch["reference_logps"].tolist() == [-1.0, -3.0, -2.0, -4.0]
    assert "reference_logps" not in collate_pairs([Pair(p.chosen, p.rejected) for p in pairs], pad_id=0)


def test_sorted_pair_batches_group_pairs_by_their_longer_sequence():
    pairs = [Pair(Rendered([1] * n, [1] * n), Rendered([2] * (7 * n % 40 + 2), [2] * (7 * n % 40 + 2)))
             for n in range(2, 42)]
    stream = TrainBatches(pairs, PAIRS, batching="sorted", batch_size=4, max_tokens=64, weighting="token", pad_id=0, seed=0)
    batches = [stream.next_indices() for _ in range(stream.batches_per_epoch)]
    assert sorted(i for b in batches for i in b) == list(range(len(pairs)))
    longer = [pair.length for pair in pairs]
    spread = lambda values: max(values) - min(values)
    tightest = sorted(longer)
    assert sorted(spread([longer[i] for i in b]) for b in batches) == \
        sorted(spread(tightest[s : s + 4]) for s in range(0, len(tightest), 4))
    assert stream.next()["input_ids"].shape[0] == 8  # 4 pairs, two rows each


def test_packing_and_mismatched_data_are_refused(tiny_tokenizer, tmp_path, chat_data):
    with pytest.raises(UserError, match="data.batching: packed does not apply to objective dpo"):
        validate_recipe({"objective": "dpo", "data": {"batching": "packed"}})
    pairs = write_jsonl(tmp_path / "p.jsonl", [PAIR] * 4)
    with pytest.raises(UserError, match="preference pairs .* train only with a preference objective"):
        load_splits(validate_recipe({"data": {"path": str(pairs), "eval_split": 0}}).data, tiny_tokenizer, 0)
    with pytest.raises(UserError, match="need records with `chosen` and `rejected`.* the data is 'messages'"):
        load_splits(validate_recipe({"data": {"path": str(chat_data)}, "objective": "dpo"}).data, tiny_tokenizer, 0,
                    kind=PAIRS)
