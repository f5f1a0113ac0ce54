from tuna.serve.text import CompletionText


def stream(tokenizer, ids, stop):
    text = CompletionText(tokenizer, stop)
    pieces = []
    for token in ids:
        pieces.append(text.push(token))
        if text.stopped:
            break
    pieces.append(text.finish())
    return pieces, text


def test_streamed_pieces_join_to_the_whole_text_and_never_show_a_stop_string(tiny_tokenizer):
    ids = tiny_tokenizer("The quick brown fox jumps over the lazy dog.", add_special_tokens=False).input_ids
    pieces, text = stream(tiny_tokenizer, ids, stop=["over"])
    assert "".join(pieces) == "The quick brown fox jumps "
    assert text.stopped
    assert all("ov" not in piece for piece in pieces)  # held back until it was known to be the stop


def test_text_that_might_start_a_stop_string_is_released_when_it_does_not(tiny_tokenizer):
    ids = tiny_tokenizer("over the lazy dog", add_special_tokens=False).input_ids
    pieces, text = stream(tiny_tokenizer, ids, stop=["over the moon"])
    assert "".join(pieces) == "over the lazy dog"
    assert not text.stopped


def test_a_cut_multibyte_character_is_held_back_until_complete(tiny_tokenizer):
    ids = tiny_tokenizer("é!", add_special_tokens=False).input_ids
    assert len(ids) >= 2  # byte-level BPE: é is two byte tokens for this tokenizer
    pieces, _ = stream(tiny_tokenizer, ids, stop=[])
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) == "é!"
