import pytest

from tuna.data.prompts import render_prompts
from tuna.data.render import chat_text
from tuna.errors import UserError


def test_prompts_stop_before_the_answer_and_keep_their_record(tiny_tokenizer):
    chat = {"messages": [{"role": "user", "content": "what is 1 + 1?"}, {"role": "assistant", "content": "2"}],
            "answer": "2"}
    items, stats = render_prompts([chat], "auto", tiny_tokenizer, max_tokens=64)
    expected = chat_text(tiny_tokenizer, chat["messages"][:1], generation_prompt=True)
    assert tiny_tokenizer.decode(items[0].input_ids) == expected
    assert items[0].record["answer"] == "2" and stats.kept == 1

    only = [{"prompt": "what is 2 + 2?", "answer": "4"}, {"prompt": "word " * 100, "answer": "x"}]
    items, stats = render_prompts(only, "auto", tiny_tokenizer, max_tokens=64)
    assert tiny_tokenizer.decode(items[0].input_ids) == chat_text(
        tiny_tokenizer, [{"role": "user", "content": "what is 2 + 2?"}], generation_prompt=True)
    assert stats.dropped_overlong == 1 and [i.index for i in items] == [0]

    raw = [{"prompt": "Q: 3+3? A:", "completion": " 6"}]
    items, _ = render_prompts(raw, "auto", tiny_tokenizer, max_tokens=64)
    assert items[0].input_ids == tiny_tokenizer("Q: 3+3? A:").input_ids


def test_text_records_and_prompt_free_chats_are_refused(tiny_tokenizer):
    with pytest.raises(UserError, match="no prompt to generate from"):
        render_prompts([{"text": "hello"}], "auto", tiny_tokenizer, max_tokens=64)
    with pytest.raises(UserError, match="no turn before its answer"):
        render_prompts([{"messages": [{"role": "assistant", "content": "hi"}]}], "auto", tiny_tokenizer, max_tokens=64)
