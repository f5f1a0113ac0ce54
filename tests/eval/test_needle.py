"""Needle in a haystack: the needle sits where asked, answers are scored right, and the grid is written."""
import json
import random
import re

import pytest

from tuna.cli import main
from tuna.data.render import chat_text
from tuna.errors import UserError
from tuna.eval.needle import (INTRO, Needle, answer_tokens, build_haystack, check_lengths, filler_ids,
                              make_needles, question, run_grid, score_answer, write_results)


def tokens(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def measured_depths(tokenizer, hay):
    """Each needle's depth, measured on the rendered prompt: filler tokens before it over all filler tokens."""
    text = chat_text(tokenizer, hay.messages, generation_prompt=True)
    start = text.index(INTRO) + len(INTRO) + 2
    end = text.index("\n\n" + question(hay.needles))
    needle_tokens = [tokens(tokenizer, n.text + "\n") for n in hay.needles]
    filler = tokens(tokenizer, text[start:end]) - sum(needle_tokens)
    depths = []
    for i, needle in enumerate(hay.needles):
        before = tokens(tokenizer, text[start : text.index(needle.text)]) - sum(needle_tokens[:i])
        depths.append(before / filler)
    return depths


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_needle_sits_at_the_requested_depth_of_a_prompt_of_the_requested_length(tiny_tokenizer, depth):
    hay = build_haystack(tiny_tokenizer, 1024, depth, make_needles(1, random.Random(0)), filler_ids(tiny_tokenizer, 1024))
    assert 1024 - 8 <= tokens(tiny_tokenizer, chat_text(tiny_tokenizer, hay.messages, generation_prompt=True)) <= 1024
    [measured] = measured_depths(tiny_tokenizer, hay)
    assert measured == pytest.approx(depth, abs=0.05)  # snapped to the nearest line start
    assert hay.depths[0] == pytest.approx(measured, abs=0.01)  # and it reports where it landed


def test_several_needles_spread_from_the_depth_to_the_end(tiny_tokenizer):
    needles = make_needles(3, random.Random(1))
    hay = build_haystack(tiny_tokenizer, 1024, 0.4, needles, filler_ids(tiny_tokenizer, 1024))
    assert measured_depths(tiny_tokenizer, hay) == pytest.approx([0.4, 0.6, 0.8], abs=0.05)
    assert all(n.word in hay.messages[0]["content"].split("\n\n")[-1] for n in needles)  # the question names each


def test_scoring_counts_whole_numbers():
    needles = make_needles(3, random.Random(2))
    first, second, third = (str(n.number) for n in needles)
    assert score_answer(f"The special magic number is {first}.", needles[:1]) == 1.0
    assert score_answer(f"It is {first}1.", needles[:1]) == 0.0
    assert score_answer(f"{first}, {third} and 12345", needles) == pytest.approx(2 / 3)


def stub_reads_the_first_half(messages, max_new_tokens):
    """Answers every needle it can see in the first half of the prompt; deterministic, no model."""
    content = messages[0]["content"]
    found = re.findall(r"The special magic number for \w+ is (\d+)\.", content[: len(content) // 2])
    return " ".join(found) or "I do not know"


def test_grid_scores_a_stub_and_writes_json_and_heatmap(tiny_tokenizer, tmp_path):
    lengths, depths = [512, 1024], [0.0, 0.25, 0.75, 1.0]
    asked = []

    def answer(messages, max_new_tokens):  # reads the first half, and forgets every second time it is asked
        asked.append(max_new_tokens)
        return stub_reads_the_first_half(messages, max_new_tokens) if len(asked) % 2 else "no idea"

    result = run_grid(tiny_tokenizer, answer, lengths, depths, trials=2, seed=5, progress=False)
    assert result["accuracy"] == [[0.5, 0.5], [0.5, 0.5], [0.0, 0.0], [0.0, 0.0]]
    assert asked == [answer_tokens(1)] * 16 and len(result["cells"]) == 16
    assert len({c["numbers"][0] for c in result["cells"]}) == 16  # fresh needles per trial and cell

    out = write_results(result, tmp_path / "needle")
    saved = json.loads((out / "needle.json").read_text())
    assert saved["accuracy"] == result["accuracy"] and saved["settings"]["lengths"] == lengths
    assert (out / "needle.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grid_is_seeded(tiny_tokenizer):
    run = lambda seed: run_grid(tiny_tokenizer, stub_reads_the_first_half, [512], [0.5], needles=2, seed=seed,
                                progress=False)["cells"]
    assert run(3) == run(3) and run(3) != run(4)


def test_length_beyond_the_context_window_names_the_limit():
    check_lengths([256, 480], 512, needle_count=1)
    with pytest.raises(UserError, match="length 500 is beyond"):  # no room left for the answer
        check_lengths([500], 512, needle_count=1)
    with pytest.raises(UserError, match="length 1024 is beyond the model's context window of 512 tokens.*rope_scaling"):
        check_lengths([256, 1024], 512, needle_count=1)


@pytest.mark.slow
def test_embedded_model_tiny_grid(tmp_path, capsys):
    out = tmp_path / "needle"
    code = main(["eval", "needle", "--model", "smollm2-135m", "--lengths", "200,400", "--depths", "0,1",
                 "--out", str(out)])
    assert code == 0
    result = json.loads((out / "needle.json").read_text())
    assert result["settings"]["model"] == "smollm2-135m" and len(result["cells"]) == 4
    assert len(result["accuracy"]) == 2 and all(len(row) == 2 for row in result["accuracy"])
    for cell in result["cells"]:
        assert cell["tokens"] <= cell["length"]
        assert cell["score"] == score_answer(cell["answer"], [Needle("", n) for n in cell["numbers"]])
    assert (out / "needle.png").stat().st_size > 0
    assert "depth \\ length" in capsys.readouterr().out
