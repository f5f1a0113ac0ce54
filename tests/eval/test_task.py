"""Generation-based scoring: record formats, checks before generation, and scores that follow their records."""
from types import SimpleNamespace

import pytest

from tuna.errors import UserError
from tuna.eval.scorers import get_metrics
from tuna.eval.task import check_supported, context_window, evaluate_task, read_task
from tuna.models.load import load_any


def test_longbench_records_put_the_context_before_the_question():
    items = read_task([{"input": "Which class?", "context": "A long text.", "answers": ["sports"],
                        "all_classes": ["sports", "politics"], "_id": "abc"}])
    assert items[0].id == "abc"
    assert items[0].prompt == [{"role": "user", "content": "A long text.\n\nWhich class?"}]
    assert items[0].reference == {"answers": ["sports"], "all_classes": ["sports", "politics"]}


def test_tuna_formats_take_the_last_assistant_turn_or_the_completion_as_gold():
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    item = read_task([{"messages": chat}])[0]
    assert item.prompt == chat[:3] and item.reference["answers"] == ["4"]
    item = read_task([{"prompt": "Q: 2+2? A:", "completion": " 4"}])[0]
    assert item.prompt == "Q: 2+2? A:" and item.reference["answers"] == [" 4"]
    item = read_task([{"messages": chat[:1], "answers": ["hey", "hello"]}])[0]
    assert item.reference["answers"] == ["hey", "hello"]  # a record's own answers override


def test_unsupported_metric_is_refused_naming_metric_and_field():
    items = read_task([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])
    with pytest.raises(UserError, match="metric classification needs `all_classes` in every record; record 1 has none"):
        check_supported(items, get_metrics(["qa_f1", "classification"]))
    no_gold = read_task([{"input": "q", "context": "c"}])
    with pytest.raises(UserError, match="metric qa_f1 needs gold answers"):
        check_supported(no_gold, get_metrics(["qa_f1"]))
    check_supported(items, get_metrics(["qa_f1", "rouge_l"]))


def test_scores_stay_with_their_records_after_length_sorting(tiny_model_dir, monkeypatch):
    """Prompts are generated shortest first; every prediction must come back to its own record."""
    records = [{"messages": [{"role": "user", "content": f"repeat {word}" + " pad" * pad},
                             {"role": "assistant", "content": word}]}
               for word, pad in [("alpha", 9), ("beta", 0), ("gamma", 5), ("delta", 2)]]
    # an answerer that echoes the word of its prompt, except for gamma, which it gets wrong
    echo = lambda prompt: prompt[-1]["content"].split()[1].replace("gamma", "wrong")
    seen = {}

    def fake_generate(model, tokenizer, prompts, **options):
        seen["order"] = [p[-1]["content"].split()[1] for p in prompts]
        return [echo(p) for p in prompts]

    monkeypatch.setattr("tuna.eval.generate.generate", fake_generate)
    model, tokenizer = load_any(str(tiny_model_dir))
    summary, rows = evaluate_task(model, tokenizer, read_task(records), get_metrics(["exact_match", "qa_f1"]),
                                  max_new_tokens=4, batch_size=2, progress=False)
    assert seen["order"] == ["beta", "delta", "gamma", "alpha"]
    assert [r["prediction"] for r in rows] == ["alpha", "beta", "wrong", "delta"]
    assert [r["scores"]["exact_match"] for r in rows] == [1.0, 1.0, 0.0, 1.0]
    assert summary == {"metrics": {"exact_match": 0.75, "qa_f1": 0.75}, "count": 4}


def test_prompt_beyond_the_context_window_is_refused_before_generating(tiny_model_dir, monkeypatch):
    monkeypatch.setattr("tuna.eval.generate.generate", lambda *a, **k: pytest.fail("generated"))
    model, tokenizer = load_any(str(tiny_model_dir))
    items = read_task([{"input": "q", "context": "word " * 600, "answers": ["a"]}])
    with pytest.raises(UserError, match="record 1, .* context window of 512 tokens"):
        evaluate_task(model, tokenizer, items, get_metrics(["qa_f1"]), max_new_tokens=8, batch_size=1, progress=False)


@pytest.mark.parametrize("kind", ["linear", "dynamic", "yarn"])
def test_context_window_counts_rope_scaling(tiny_model_dir, kind):
    from tuna.config import RopeScaling
    from tuna.models.rope import apply_rope_scaling

    model, _ = load_any(str(tiny_model_dir))
    assert context_window(model) == 512
    apply_rope_scaling(model, RopeScaling(type=kind, factor=4.0))
    assert context_window(model) == 2048


def test_context_window_of_a_hub_yarn_config_that_keeps_the_original_window():
    config = SimpleNamespace(max_position_embeddings=32768, rope_parameters={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768})
    assert context_window(SimpleNamespace(config=config)) == 131072
