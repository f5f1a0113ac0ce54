import pytest

from tuna.data.formats import Example, detect_format, to_example
from tuna.data.render import IGNORE, render_example, render_records
from tuna.errors import UserError

CONVERSATION = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of May's month number?"},
    {"role": "assistant", "content": "5"},
]


def test_multi_turn_mask_is_token_exact(tiny_tokenizer):
    # Hand-built expectation: the rendered conversation as (text, trained?) segments, each tokenized alone.
    segments = [
        ("<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n"
         "<|im_start|>assistant\n", False),
        ("Paris.<|im_end|>", True),
        ("\n<|im_start|>user\nAnd of May's month number?<|im_end|>\n<|im_start|>assistant\n", False),
        ("5<|im_end|>", True),
        ("\n", False),
    ]
    expected_ids, expected_labels = [], []
    for text, trained in segments:
        ids = tiny_tokenizer(text, add_special_tokens=False).input_ids
        expected_ids += ids
        expected_labels += ids if trained else [IGNORE] * len(ids)

    rendered = render_example(Example(messages=CONVERSATION), tiny_tokenizer)

    assert rendered.input_ids == expected_ids
    assert rendered.labels == expected_labels
    trained = [t for t, label in zip(rendered.input_ids, rendered.labels) if label != IGNORE]
    assert tiny_tokenizer.decode(trained) == "Paris.<|im_end|>5<|im_end|>"


def test_train_on_all_labels_every_token(tiny_tokenizer):
    rendered = render_example(Example(messages=CONVERSATION), tiny_tokenizer, train_on="all")
    assert rendered.labels == rendered.input_ids


def test_prompt_completion_is_raw_and_masks_the_prompt(tiny_tokenizer):
    rendered = render_example(Example(prompt="Q: 2+2? A:", completion=" 4"), tiny_tokenizer)
    prompt_ids = tiny_tokenizer("Q: 2+2? A:").input_ids
    assert rendered.labels[: len(prompt_ids)] == [IGNORE] * len(prompt_ids)
    assert rendered.labels[len(prompt_ids) :] == tiny_tokenizer(" 4", add_special_tokens=False).input_ids + [tiny_tokenizer.eos_token_id]


def test_formats_are_detected_and_instruction_becomes_chat():
    assert detect_format([{"messages": []}]) == "messages"
    assert detect_format([{"instruction": "a", "input": "", "output": "b"}]) == "instruction"
    assert detect_format([{"prompt": "a", "completion": "b"}]) == "prompt_completion"
    assert detect_format([{"text": "a"}]) == "text"
    example = to_example({"instruction": "Add.", "input": "1 2", "output": "3"}, "instruction", 0)
    assert example.messages == [{"role": "user", "content": "Add.\n\n1 2"}, {"role": "assistant", "content": "3"}]
    with pytest.raises(UserError, match="cannot tell the data format"):
        detect_format([{"question": "a"}])


def test_unknown_role_and_unknown_format_are_named():
    with pytest.raises(UserError, match="record 2, message 1: unknown role 'bot'"):
        to_example({"messages": [{"role": "bot", "content": "x"}]}, "messages", 1)
    with pytest.raises(UserError, match="unknown data format 'chatml'"):
        to_example({"text": "x"}, "chatml", 0)


def test_overflow_truncates_or_drops_and_counts(tiny_tokenizer):
    records = [{"text": "word " * 50}, {"text": "short"}]
    kept, stats = render_records(records, "text", tiny_tokenizer, train_on="all", max_tokens=16, overflow="truncate")
    assert [len(r.input_ids) for r in kept] == [16, len(tiny_tokenizer("short").input_ids) + 1]
    assert stats.truncated == 1 and stats.kept == 2
    kept, stats = render_records(records, "text", tiny_tokenizer, train_on="all", max_tokens=16, overflow="drop")
    assert stats.dropped_overlong == 1 and stats.kept == 1


def test_no_trainable_tokens_is_an_error(tiny_tokenizer):
    records = [{"messages": [{"role": "user", "content": "hello"}]}]
    with pytest.raises(UserError, match="no example has trainable tokens"):
        render_records(records, "auto", tiny_tokenizer, train_on="completion", max_tokens=64, overflow="truncate")
    with pytest.raises(UserError, match="empty"):
        render_records([], "auto", tiny_tokenizer, train_on="completion", max_tokens=64, overflow="truncate")


def test_empty_completions_are_dropped_and_counted(tiny_tokenizer):
    records = [{"prompt": "Q: 1+1? A:", "completion": " 2"}, {"prompt": "Q: 2+2? A:", "completion": ""},
               {"prompt": "Q: 3+3? A:", "completion": "  \n"}]
    kept, stats = render_records(records, "auto", tiny_tokenizer, train_on="completion", max_tokens=64, overflow="drop")
    assert stats.kept == 1 and stats.dropped_empty_completion == 2
    assert "2 dropped with an empty completion" in stats.summary()
    chats = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
             {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    kept, stats = render_records(chats, "auto", tiny_tokenizer, train_on="completion", max_tokens=64, overflow="drop")
    assert stats.kept == 1 and stats.dropped_empty_completion == 1
    kept, stats = render_records(records, "auto", tiny_tokenizer, train_on="all", max_tokens=64, overflow="drop")
    assert stats.kept == 3  # training on all tokens, the prompt still teaches something
