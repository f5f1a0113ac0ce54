"""Multiple choice by log-likelihood: choice log-probs against a plain forward pass, the picks, and the metrics."""
import pytest
import torch

from tuna.data.render import chat_text
from tuna.errors import UserError
from tuna.eval.choices import choice_logprobs, ranking
from tuna.eval.task import multiple_choice_accuracy
from tuna.eval.generate import generate
from tuna.eval.scorers import get_metrics
from tuna.eval.task import evaluate_task, read_task
from tuna.models.load import load_any

CHAT = [{"role": "user", "content": "what is the capital of France"}]
RAW = "The quick brown fox"


@pytest.fixture(scope="module")
def qwen(tiny_dirs):
    return load_any(str(tiny_dirs["qwen2"]))


def plain_logprob(model, tokenizer, prompt, choice) -> tuple[float, int]:
    """One unpadded sequence, log-softmax by hand: the choice tokens' log-probs given everything before them."""
    if isinstance(prompt, list):
        prompt_ids = tokenizer(chat_text(tokenizer, prompt, generation_prompt=True), add_special_tokens=False).input_ids
    else:
        prompt_ids = tokenizer(prompt).input_ids
    choice_ids = tokenizer(choice, add_special_tokens=False).input_ids
    ids = torch.tensor([prompt_ids + choice_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    total = sum(float(logprobs[len(prompt_ids) + j - 1, token]) for j, token in enumerate(choice_ids))
    return total, len(choice_ids)


def test_choice_logprobs_equal_a_plain_forward_pass(qwen):
    model, tokenizer = qwen
    prompts = [CHAT, RAW, [{"role": "user", "content": "hello"}]]
    choices = [["Paris", "the capital is Paris", "London"], [" jumps", " jumps over the lazy dog"], ["hi", "world"]]
    # batches of 3 mix records and lengths, so padding and ordering are exercised
    got = choice_logprobs(model, tokenizer, prompts, choices, batch_size=3)
    for prompt, options, scores in zip(prompts, choices, got):
        for choice, (total, count) in zip(options, scores):
            expected, tokens = plain_logprob(model, tokenizer, prompt, choice)
            assert count == tokens and total == pytest.approx(expected, abs=1e-4)


def test_spaces_ending_a_raw_prompt_move_to_the_choice(qwen):
    model, tokenizer = qwen
    [[moved]] = choice_logprobs(model, tokenizer, ["The quick brown "], [["fox"]])
    [[written]] = choice_logprobs(model, tokenizer, ["The quick brown"], [[" fox"]])
    assert moved == pytest.approx(written)


def test_picks_by_sum_and_by_log_prob_per_character():
    # sums -2 > -4 pick "a"; per character -2/1 < -4/4 = -1 picks "bbbb"
    picked = ranking(["a", "bbbb"], [(-2.0, 1), (-4.0, 2)], gold=1)
    assert (picked["predicted"], picked["predicted_norm"], picked["gold"]) == (0, 1, 1)
    assert picked["logprobs"] == [-2.0, -4.0] and picked["tokens"] == [1, 2]
    assert ranking(["x", "y"], [(-1.0, 1), (-1.0, 1)], gold=0)["predicted"] == 0  # a tie goes to the earlier choice
    acc, acc_norm = get_metrics(["mc_accuracy", "mc_accuracy_norm"])
    assert acc.score(picked, {"answer": 1}) == 0.0 and acc_norm.score(picked, {"answer": 1}) == 1.0


def greedy_token(model, tokenizer, prompt) -> str:
    return generate(model, tokenizer, [prompt], max_new_tokens=1)[0]


def test_the_models_own_greedy_continuation_wins(qwen):
    """The greedy next token is the most probable one, so among one-token choices it has the highest log-prob."""
    model, tokenizer = qwen
    others = [" is", " the", "The"]  # one token each in the tiny vocabulary
    hello = [{"role": "user", "content": "hello"}]
    records = [{"messages": CHAT, "choices": [others[0], greedy_token(model, tokenizer, CHAT), *others[1:]],
                "answer": 1},
               {"messages": hello, "choices": [greedy_token(model, tokenizer, hello), *others], "answer": "The"}]
    result = multiple_choice_accuracy(model, tokenizer, records, batch_size=2)
    assert all(r["tokens"] == [1, 1, 1, 1] for r in result["rows"])  # every choice is one token, as the claim needs
    assert [r["predicted"] for r in result["rows"]] == [1, 0]
    assert [r["gold"] for r in result["rows"]] == [1, 3]  # `answer` as the choice's text becomes its index
    assert result["acc"] == 0.5 and result["count"] == 2
    for row, record in zip(result["rows"], records):
        per_char = [s / len(c) for s, c in zip(row["logprobs"], record["choices"])]
        assert row["predicted_norm"] == per_char.index(max(per_char))
    assert result["acc_norm"] == sum(r["predicted_norm"] == r["gold"] for r in result["rows"]) / 2
    [raw] = choice_logprobs(model, tokenizer, [RAW], [[*others, greedy_token(model, tokenizer, RAW)]])
    assert [count for _, count in raw] == [1, 1, 1, 1] and max(raw)[0] == raw[3][0]


def test_multiple_choice_data_is_checked_before_scoring(qwen):
    model, tokenizer = qwen
    with pytest.raises(UserError, match="metric mc_accuracy needs `choices` in every record; record 2 has none"):
        multiple_choice_accuracy(model, tokenizer, [{"prompt": "a", "choices": ["b", "c"], "answer": 0},
                                                    {"prompt": "a", "completion": "b"}])
    with pytest.raises(UserError, match="record 1: `answer` must be the gold choice's index \\(0 to 1\\) or its text"):
        multiple_choice_accuracy(model, tokenizer, [{"prompt": "a", "choices": ["b", "c"], "answer": 2}])
    with pytest.raises(UserError, match="record 1, choice 2: prompt and choice are .* context window of 512"):
        choice_logprobs(model, tokenizer, ["a"], [["b", " word" * 600]])


def test_choice_metrics_alone_generate_nothing(qwen, monkeypatch):
    monkeypatch.setattr("tuna.eval.generate.generate", lambda *a, **k: pytest.fail("generated"))
    model, tokenizer = qwen
    items = read_task([{"prompt": RAW, "choices": [" jumps", " sleeps"], "answer": 0, "id": "fox"}])
    summary, rows = evaluate_task(model, tokenizer, items, get_metrics(["mc_accuracy", "mc_accuracy_norm"]),
                                  max_new_tokens=4, batch_size=2, progress=False)
    [expected] = choice_logprobs(model, tokenizer, [RAW], [[" jumps", " sleeps"]])
    assert rows[0]["id"] == "fox" and "prediction" not in rows[0]
    assert rows[0]["choice"]["logprobs"] == pytest.approx([total for total, _ in expected])
    picked = rows[0]["choice"]["predicted"] == 0
    assert summary == {"metrics": {"mc_accuracy": float(picked),
                                   "mc_accuracy_norm": float(rows[0]["choice"]["predicted_norm"] == 0)}, "count": 1}
