import dataclasses
import json
import os
import re
import signal
from html import escape

from tuna.objectives import REGISTRY as OBJECTIVES
from tuna.report.run_report import chart_groups, write_run_report
from tuna.train.loop import train
from tuna.rundir import read_metrics


def charts(html: str) -> list[tuple[str, list[str]]]:
    """(caption, texts in the SVG) of each figure; matplotlib keeps labels as <text> with svg.fonttype none."""
    return [(caption, re.findall(r">([^<>]+)</text>", svg))
            for svg, caption in re.findall(r"<figure>(.*?)<figcaption>(.*?)</figcaption>", html, re.S)]


def summary_cells(html: str) -> dict[str, str]:
    summary = re.search(r'<table id="summary">.*?</table>', html, re.S).group(0)
    return dict(re.findall(r"<tr><td>(.*?)</td><td[^>]*>(.*?)</td></tr>", summary))


def test_a_training_run_writes_a_report_with_its_curves_summary_and_config(tiny_recipe, capsys):
    result = train(tiny_recipe(train={"max_steps": 4}, eval={"every": 2}), progress=False)
    path = f"{result.run_dir}/report.html"
    assert f"tuna: report: {path}" in capsys.readouterr().err
    html = open(path).read()

    cells = summary_cells(html)
    assert cells["steps"] == "4" and cells["status"] == "finished"
    assert cells["tokens"] == f"{result.tokens:,}"
    assert cells["final train loss"] == f"{result.train_loss:.4g}"
    drawn = charts(html)
    assert drawn[0][0] == "train/loss, eval/loss"  # held-out points on the loss chart, both in its legend
    assert {"train/loss", "eval/loss", "step"} <= set(drawn[0][1])
    logged = {key for record in read_metrics(f"{result.run_dir}/metrics.jsonl") for key in record} - {"step", "epoch"}
    assert len(drawn) == len(chart_groups(sorted(logged))) > 4
    assert sorted(key for caption, _ in drawn for key in caption.split(", ")) == sorted(logged)  # each series once
    assert escape(open(f"{result.run_dir}/config.yaml").read()) in html
    assert "<td>device</td><td>cpu</td>" in html


def test_series_of_any_objective_are_drawn_train_and_eval_together(tmp_path):
    records = [{"step": s, "train/loss": 1 / s, "rewards/margins": 0.1 * s, "rewards/accuracies": 0.5, "epoch": 0,
                **({"eval/rewards/margins": 0.05 * s, "eval/reward": 0.3} if s % 2 == 0 else {})} for s in range(1, 5)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "config.yaml").write_text("method: lora\nobjective: dpo\n")
    html = write_run_report(tmp_path).read_text()
    assert [caption for caption, _ in charts(html)] == [
        "train/loss", "rewards/margins, eval/rewards/margins", "rewards/accuracies", "eval/reward"]
    cells = summary_cells(html)
    assert cells["status"] == "no summary.json: running, or stopped by a crash" and cells["steps"] == "4"
    assert cells["final eval/reward"] == "0.3"


def test_a_one_step_run_has_tables_but_no_curves(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/loss": 2.5, "eval/loss": 2.75}) + "\n")
    html = write_run_report(tmp_path).read_text()
    assert "<svg" not in html and "too few for curves" in html
    assert summary_cells(html)["final eval/loss"] == "2.75"
    assert "<td>eval/loss</td>" in html  # the logged-series table still lists it


def test_an_interrupted_run_gets_its_report(tiny_recipe, monkeypatch):
    real, calls = OBJECTIVES["sft"], {"n": 0}

    def loss(*args):
        calls["n"] += 1
        if calls["n"] == 2:  # Ctrl-C during step 2: the loop finishes that step and stops
            os.kill(os.getpid(), signal.SIGINT)
        return real.loss(*args)

    monkeypatch.setitem(OBJECTIVES, "sft", dataclasses.replace(real, loss=loss))
    result = train(tiny_recipe(train={"max_steps": 6}), progress=False)
    assert result.interrupted and result.steps == 2
    cells = summary_cells(open(f"{result.run_dir}/report.html").read())
    assert cells["status"] == "interrupted at step 2" and cells["steps"] == "2"
