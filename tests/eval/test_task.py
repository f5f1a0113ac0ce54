"""Scoring by metric: record formats, checks before generation, and scores that follow their records."""
import json
import math
from types import SimpleNamespace

import pytest

from tuna.errors import UserError
from tuna.eval.scorers import corpus_bleu, get_metrics
from tuna.eval.task import check_supported, evaluate_task, read_task
from tuna.models.rope import context_window
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

    monkeypatch.setattr("tuna.eval.task.generate", fake_generate)
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
    from tuna.models.rope import RopeScaling
    from tuna.models.rope import apply_rope_scaling

    model, _ = load_any(str(tiny_model_dir))
    assert context_window(model) == 512
    apply_rope_scaling(model, RopeScaling(type=kind, factor=4.0))
    assert context_window(model) == 2048


def test_context_window_of_a_hub_yarn_config_that_keeps_the_original_window():
    config = SimpleNamespace(max_position_embeddings=32768, rope_parameters={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768})
    assert context_window(SimpleNamespace(config=config)) == 131072


def test_prompt_only_records_have_no_gold():
    assert read_task([{"prompt": "Give JSON:"}])[0].prompt == "Give JSON:"
    assert read_task([{"prompt": "Give JSON:"}])[0].reference == {"answers": []}
    item = read_task([{"instruction": "Name a colour.", "input": "Not red."}])[0]
    assert item.prompt == [{"role": "user", "content": "Name a colour.\n\nNot red."}]
    assert item.reference["answers"] == []
    check_supported([item], get_metrics(["json_valid"]))  # needs nothing
    with pytest.raises(UserError, match="`text` records have no prompt to answer"):
        read_task([{"text": "just text"}])


def test_choices_and_the_gold_choice_by_index_or_text():
    items = read_task([{"prompt": "Q:", "choices": [" a", " b"], "answer": 0},
                       {"prompt": "Q:", "choices": [" a", " b"], "answer": " b"}])
    assert [item.reference["answer"] for item in items] == [0, 1]
    check_supported(items, get_metrics(["mc_accuracy"]))  # index 0 is a gold answer, not a missing one
    with pytest.raises(UserError, match="record 1: `choices` must be a list of at least two non-empty strings"):
        read_task([{"prompt": "Q:", "choices": [" a", ""], "answer": 0}])
    with pytest.raises(UserError, match=r"record 1: `answer` must be the gold choice's index \(0 to 1\) or its text; "
                                        "got 'c'"):
        read_task([{"prompt": "Q:", "choices": ["a", "b"], "answer": "c"}])
    with pytest.raises(UserError, match="metric mc_accuracy_norm needs `answer` \\(the gold choice's index or text\\)"):
        check_supported(read_task([{"prompt": "Q:", "choices": ["a", "b"]}]), get_metrics(["mc_accuracy_norm"]))
    with pytest.raises(UserError, match="metric mc_accuracy needs `choices` in every record; record 1 has none"):
        check_supported(read_task([{"prompt": "Q:", "completion": "a"}]), get_metrics(["mc_accuracy"]))


def test_generation_and_choice_metrics_in_one_call(tiny_model_dir, monkeypatch):
    """One generation pass for the generation metrics, with the decoding options given; choices ranked apart."""
    calls = []

    def fake_generate(model, tokenizer, prompts, **options):
        calls.append(options)
        return ['{"ok": true}' if "json" in p else "a b c d" for p in prompts]

    monkeypatch.setattr("tuna.eval.task.generate", fake_generate)
    model, tokenizer = load_any(str(tiny_model_dir))
    records = [{"prompt": "json please", "answers": ["x"], "choices": ["yes", "no"], "answer": 0},
               {"prompt": "four letters", "answers": ["a b c d e f"], "choices": ["yes", "no"], "answer": "no"}]
    generation = {"sample": True, "temperature": 0.7, "top_p": 0.9, "seed": 3, "stop": ["\n"]}
    summary, rows = evaluate_task(model, tokenizer, read_task(records),
                                  get_metrics(["json_valid", "bleu", "mc_accuracy"]), max_new_tokens=4, batch_size=2,
                                  progress=False, generation=generation)
    assert len(calls) == 1 and {k: calls[0][k] for k in generation} == generation
    assert [r["scores"]["json_valid"] for r in rows] == [1.0, 0.0]
    assert [r["choice"]["gold"] for r in rows] == [0, 1]
    assert summary["metrics"]["mc_accuracy"] == sum(r["choice"]["predicted"] == r["choice"]["gold"] for r in rows) / 2
    # record 2 is "a b c d" against 6 tokens (BLEU e^-0.5), record 1 shares nothing with "x"
    assert summary["metrics"]["bleu"] == pytest.approx(math.exp(-0.5) / 2)
    assert summary["metrics"]["corpus_bleu"] == corpus_bleu(['{"ok": true}', "a b c d"], [r.reference for r in
                                                                                          read_task(records)])
    assert list(summary["metrics"]) == ["json_valid", "bleu", "mc_accuracy", "corpus_bleu"]


def run_cli(args, capsys):
    from tuna.cli import main

    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("options, message", [
    (["--metric", "mc_accuracy"], "metric mc_accuracy needs `choices` in every record; record 1 has none"),
    (["--metric", "exact_match", "--normalize", "lower,stem"], "--normalize takes a comma list of lower, punct"),
    (["--metric", "qa_f1", "--temperature", "0.5"], "--temperature and --top-p apply only with --sample"),
    (["--metric", "qa_f1", "--sample", "--top-p", "0"], "--temperature must be above 0 and --top-p in (0, 1]"),
])
def test_cli_bad_metric_input_exits_2_before_loading(options, message, chat_data, capsys, monkeypatch):
    monkeypatch.setattr("tuna.cli._load", lambda spec: pytest.fail("loaded the model"))
    code, _, err = run_cli(["eval", "--model", "unused", "--data", str(chat_data), *options], capsys)
    assert code == 2 and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_records_the_normalisation_and_decoding(tmp_path, tiny_dirs, capsys):
    from tuna.eval.generate import generate

    prompts = [f"{i} + {i} =" for i in range(4)]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": f" {2 * i}", "choices": [f" {2 * i}", f" {i}"],
                                        "answer": 0}) + "\n" for i, p in enumerate(prompts)))
    out = tmp_path / "scores"
    code, stdout, _ = run_cli(["eval", "--model", str(tiny_dirs["qwen2"]), "--data", str(data), "--metric",
                               "exact_match,mc_accuracy", "--normalize", "lower", "--max-new-tokens", "3", "--stop",
                               "8", "--out", str(out)], capsys)
    summary = json.loads(stdout)
    assert code == 0 and summary == json.loads((out / "scores.json").read_text())
    assert summary["normalize"] == ["lower"] and summary["stop"] == ["8"] and summary["sample"] is False
    assert "temperature" not in summary  # greedy: no sampling settings to report
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    model, tokenizer = load_any(str(tiny_dirs["qwen2"]))
    unstopped = generate(model, tokenizer, prompts, max_new_tokens=3)
    assert any("8" in text for text in unstopped)  # the stop string matters for this data
    assert [r["prediction"] for r in rows] == [text.split("8")[0].strip() for text in unstopped]
    assert [r["choice"]["gold"] for r in rows] == [0] * 4
    code, stdout, _ = run_cli(["eval", "--model", str(tiny_dirs["qwen2"]), "--data", str(data), "--metric",
                               "mc_accuracy", "--out", str(out)], capsys)
    assert code == 0 and "max_new_tokens" not in json.loads(stdout) and "normalize" not in json.loads(stdout)
