"""final/README.md and merged exports carry a model card with the run's real figures."""
import json

import pytest
import yaml

from tuna.export import export_merged
from tuna.rundir import read_metrics
from tuna.train.loop import train


def card_of(folder):
    text = (folder / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def row(body: str, label: str) -> str:
    return next(line for line in body.splitlines() if line.startswith(f"| {label} |"))


@pytest.mark.parametrize("method, library", [("lora", "peft"), ("full", "transformers")])
def test_the_final_card_holds_the_run_summary(method, library, tiny_recipe, tiny_model_dir, tmp_path):
    train(tiny_recipe(method=method, train={"max_steps": 6}, eval={"every": 3}), progress=False)
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    front, body = card_of(run / "final")
    assert front == {"library_name": library, "tags": ["tuna", method, "sft"]}  # a local base: no base_model
    assert f"`{tiny_model_dir}`" in row(body, "base model")
    assert ("A PEFT adapter for" if method == "lora" else "A full fine-tune of") in body
    if method == "lora":
        assert "r=16, alpha=32.0, dropout=0.05" in row(body, "method")
    assert row(body, "data") == (f"| data | `chat.jsonl`; train {summary['data']}; eval {summary['eval_data']}; "
                                 "max_tokens 1024 |")
    assert summary["data"] == "32 kept" and summary["eval_data"] == "8 kept"  # 40 records, eval_split 0.2
    assert row(body, "steps") == "| steps | 6 |"
    assert row(body, "tokens") == f"| tokens | {summary['tokens']:,} |"
    assert row(body, "final train loss") == f"| final train loss | {summary['train_loss']:.4f} |"
    assert row(body, "final eval loss") == f"| final eval loss | {summary['eval_loss']:.4f} |"
    assert row(body, "final eval perplexity") == f"| final eval perplexity | {summary['eval_ppl']:.4f} |"
    evals = [r for r in read_metrics(run / "metrics.jsonl") if "eval/loss" in r]
    assert [r["step"] for r in evals] == [3, 6]
    for r in evals:
        assert f"| {r['step']} | {r['eval/loss']:.4f} | {r['eval/ppl']:.4f} |" in body


def test_a_merged_export_carries_the_card_as_a_transformers_checkpoint(tiny_recipe, tmp_path):
    train(tiny_recipe(train={"max_steps": 2}, eval={"every": 0}, data={"eval_split": 0.0}), progress=False)
    out = export_merged(tmp_path / "run", tmp_path / "merged")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    front, body = card_of(out)
    assert front["library_name"] == "transformers" and front["tags"] == ["tuna", "lora", "sft"]
    assert "with the trained change merged in: a plain transformers checkpoint" in body
    assert "from transformers import AutoModelForCausalLM" in body
    assert row(body, "final train loss") == f"| final train loss | {summary['train_loss']:.4f} |"
    assert "final eval loss" not in body and "## Evaluation" not in body  # no eval split, no eval figures
