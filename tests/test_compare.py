import json

import pytest
import torch
import yaml

from tuna.cli import main
from tuna.errors import UserError
from tuna import compare
from tuna.compare import run_compare, variant_recipe
from tuna.report.compare_report import pareto_front


def test_the_pareto_front_keeps_exactly_the_undominated_variants():
    points = [{"name": "a", "gain": 10, "forgetting": 5}, {"name": "b", "gain": 20, "forgetting": 8},
              {"name": "c", "gain": 9, "forgetting": 6},  # a learns more and forgets less
              {"name": "d", "gain": 20, "forgetting": 9},  # b: as much gain, less forgetting
              {"name": "e", "gain": 1, "forgetting": -1}]
    assert pareto_front(points) == ["a", "b", "e"]


def test_variants_override_the_base_but_not_its_budget(tmp_path):
    base = {"method": "lora", "lora": {"r": 4}, "train": {"max_steps": 3, "lr": 1e-3}}
    name, raw = variant_recipe(base, {"name": "full-ft", "method": "full", "train": {"lr": 1e-5}}, tmp_path)
    assert name == "full-ft" and raw["method"] == "full" and "lora" not in raw  # LoRA knobs do not apply to full
    assert raw["train"] == {"max_steps": 3, "lr": 1e-5} and raw["output_dir"] == str(tmp_path)
    assert variant_recipe(base, "dora", tmp_path)[1]["lora"] == {"r": 4}  # dora reads the lora section
    with pytest.raises(UserError, match="variant x: train.max_steps is part of the shared budget"):
        variant_recipe(base, {"name": "x", "train": {"max_steps": 9}}, tmp_path)


def write_matrix(tmp_path, tiny_model_dir, chat_data, variants):
    base = {"model": str(tiny_model_dir), "data": {"path": str(chat_data), "eval_split": 0.2},
            "method": "lora", "lora": {"r": 4},
            "train": {"max_steps": 3, "micro_batch_size": 4, "lr": 1e-2, "device": "cpu", "precision": "fp32",
                      "save_every": 2}}
    matrix = {"base": base, "variants": variants, "task": {"data": str(chat_data), "max_new_tokens": 4},
              "output_dir": str(tmp_path / "compare")}
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(matrix))
    return path


def test_compare_trains_scores_records_failures_and_resumes(tiny_model_dir, chat_data, tmp_path, monkeypatch):
    variants = ["lora", {"name": "full", "method": "full", "train": {"lr": 1e-3}},
                {"name": "bad-knob", "lora": {"r": 0}},  # refused by the config schema
                {"name": "no-model", "model": str(tmp_path / "missing")}]  # fails inside its training process
    path = write_matrix(tmp_path, tiny_model_dir, chat_data, variants)
    results = run_compare(path, progress=False)
    out = tmp_path / "compare"
    saved = json.loads((out / "results.json").read_text())
    assert saved["variants"].keys() == {"lora", "full", "bad-knob", "no-model"}
    assert {n: v["status"] for n, v in saved["variants"].items()} == \
        {"lora": "done", "full": "done", "bad-knob": "failed", "no-model": "failed"}
    assert "lora.r" in saved["variants"]["bad-knob"]["error"]
    assert "model not found" in saved["variants"]["no-model"]["error"]
    lora, full = saved["variants"]["lora"], saved["variants"]["full"]
    assert lora["tokens"] == full["tokens"] > 0 and lora["steps"] == full["steps"] == 3  # the same budget
    assert lora["trainable_params"] < full["trainable_params"] == full["total_params"]
    for entry in (lora, full):
        assert set(entry["scores"]) == {"task", "task_items", "general_ppl", "general_mc"} and len(entry["loss_curve"]) == 3
    assert set(saved["base"]) == {"task", "task_items", "general_ppl", "general_mc"}
    summary = (out / "summary.md").read_text()
    assert "| lora | done |" in summary and "| bad-knob | failed: " in summary
    assert "<table" in (out / "report.html").read_text() and "<svg" in (out / "report.html").read_text()
    assert results["variants"].keys() == saved["variants"].keys()

    # A second run keeps the finished variants and tries only the failed ones again.
    trained = []
    real = compare.train_variant
    monkeypatch.setattr(compare, "train_variant", lambda config, *a, **k: trained.append(config.parent.name)
                        or real(config, *a, **k))
    run_compare(path, progress=False)
    assert trained == ["no-model"]

    # A finished variant whose run directory is gone is trained again, not reported from results.json.
    import shutil

    shutil.rmtree(out / "variants" / "full")
    trained.clear()
    run_compare(path, progress=False)
    assert trained == ["full", "no-model"]


def test_compare_cli_exits_nonzero_when_a_variant_failed_and_2_on_a_bad_matrix(tiny_model_dir, chat_data, tmp_path,
                                                                             capsys):
    path = write_matrix(tmp_path, tiny_model_dir, chat_data, [{"name": "no-model", "model": str(tmp_path / "nope")}])
    assert main(["compare", str(path), "--no-progress"]) == 1
    assert "| no-model | failed: " in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": {}, "variants": ["lora", "lora"]}))
    assert main(["compare", str(bad)]) == 2
    assert "variant name 'lora' is used twice" in capsys.readouterr().err


def test_merge_variants_merge_earlier_results_without_training_and_are_scored(tiny_model_dir, chat_data, tmp_path,
                                                                             monkeypatch):
    from safetensors.torch import load_file

    variants = [{"name": "full", "method": "full", "train": {"lr": 1e-3}},
                {"name": "full-s2", "method": "full", "train": {"lr": 1e-3, "seed": 2}},  # a replicate
                {"name": "lines", "merge": {"method": "lines", "of": ["full"], "alpha": 0.0, "beta": 1.0}},
                {"name": "stock", "merge": {"method": "model_stock", "of": ["full", "full-s2"]}},
                {"name": "soup", "merge": {"method": "linear", "of": ["full", "full-s2"], "weights": [1, 3]}},
                {"name": "early", "merge": {"method": "linear", "of": ["later"]}},
                {"name": "typo", "merge": {"method": "lines", "of": ["full"], "alpah": 0.5}},
                {"name": "later", "merge": {"method": "linear", "of": ["full"]}}]
    path = write_matrix(tmp_path, tiny_model_dir, chat_data, variants)
    results = run_compare(path, progress=False)["variants"]
    assert {n: v["status"] for n, v in results.items()} == {
        "full": "done", "full-s2": "done", "lines": "done", "stock": "done", "soup": "done", "early": "failed",
        "typo": "failed", "later": "done"}
    assert "'later', which is not an earlier variant that finished" in results["early"]["error"]
    assert "lines has no parameter 'alpah'" in results["typo"]["error"]
    for name in ("lines", "stock", "soup"):
        entry = results[name]
        assert entry["steps"] == 0 and entry["trainable_params"] is None
        assert set(entry["scores"]) == {"task", "task_items", "general_ppl", "general_mc"}

    weights = {name: load_file(next((tmp_path / "compare" / "variants" / name).rglob("model.safetensors")))
               for name in ("lines", "soup")}
    runs = {name: load_file(tmp_path / "compare" / "variants" / name / "run" / "final" / "model.safetensors")
            for name in ("full", "full-s2")}
    base = load_file(tiny_model_dir / "model.safetensors")
    key = "model.layers.0.mlp.up_proj.weight"  # block 1 of 2: LiNeS with α = 0 keeps none of its task vector
    assert torch.equal(weights["lines"][key], base[key]) and not torch.equal(runs["full"][key], base[key])
    last = "model.layers.1.mlp.up_proj.weight"  # block 2 of 2: all of it
    torch.testing.assert_close(weights["lines"][last], runs["full"][last])
    torch.testing.assert_close(weights["soup"][key], (runs["full"][key] + 3 * runs["full-s2"][key]) / 4)
    assert "| soup | done |" in (tmp_path / "compare" / "summary.md").read_text()

    merged = []
    monkeypatch.setattr("tuna.merge.run.merge_models", lambda *a, **k: merged.append(a) or None)
    run_compare(path, progress=False)  # nothing changed: the merges are kept; failed ones are tried again
    assert [call[1].parent.name for call in merged] == ["typo"]


def test_selection_variants_train_on_their_selection_from_the_base_data(tiny_model_dir, chat_data, tmp_path):
    variants = [{"name": "random-half", "data": {"select": {"strategy": "random", "budget": "50%"}}},
                {"name": "longest10", "data": {"select": {"strategy": "longest", "budget": 10}}},
                {"name": "typo", "data": {"select": {"strategy": "cherry", "budget": 10}}}]
    path = write_matrix(tmp_path, tiny_model_dir, chat_data, variants)
    results = run_compare(path, progress=False)["variants"]
    assert results["random-half"]["status"] == results["longest10"]["status"] == "done"
    assert "unknown strategy 'cherry'" in results["typo"]["error"]
    pool = chat_data.read_text().splitlines()
    for name, size in (("random-half", 20), ("longest10", 10)):
        folder = tmp_path / "compare" / "variants" / name
        chosen = (folder / "selected.jsonl").read_text().splitlines()
        assert len(chosen) == size and set(chosen) <= set(pool)
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert config["data"]["path"] == str(folder / "selected.jsonl") and config["train"]["max_steps"] == 3
    assert results["random-half"]["steps"] == results["longest10"]["steps"] == 3  # the same budget of steps


def test_seeds_train_every_variant_per_seed_report_means_and_intervals_and_resume(tiny_model_dir, chat_data,
                                                                                   tmp_path, monkeypatch):
    path = write_matrix(tmp_path, tiny_model_dir, chat_data, ["lora"])
    matrix = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**matrix, "seeds": [3, 4], "general": False}))
    real, trained = compare.train_variant, []

    def interrupted_after_one(config, *args, **kwargs):
        if trained:
            raise KeyboardInterrupt
        trained.append(str(config.parent.relative_to(tmp_path / "compare")))
        return real(config, *args, **kwargs)

    monkeypatch.setattr(compare, "train_variant", interrupted_after_one)
    with pytest.raises(KeyboardInterrupt):
        run_compare(path, progress=False)
    out = tmp_path / "compare"
    assert list(json.loads((out / "results.json").read_text())["variants"]) == ["lora@seed3"]

    monkeypatch.setattr(compare, "train_variant", lambda config, *a, **k: trained.append(
        str(config.parent.relative_to(out))) or real(config, *a, **k))
    run_compare(path, progress=False)
    assert trained == ["variants/lora/seed-3", "variants/lora/seed-4"]  # seed 3 kept, seed 4 trained
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["variants"]) == ["lora@seed3", "lora@seed4"] and saved["seeds"] == [3, 4]
    for key, entry in saved["variants"].items():
        assert entry["status"] == "done"
        assert yaml.safe_load((out / "variants" / key.replace("@seed", "/seed-") / "run" / "config.yaml").read_text()
                              )["train"]["seed"] == int(key[-1])
    assert saved["variants"]["lora@seed3"]["train_loss"] != saved["variants"]["lora@seed4"]["train_loss"]
    summary = (out / "summary.md").read_text()
    assert "| lora | done (2 seeds) |" in summary and "Per seed (3, 4):" in summary and "| lora@seed4 | done |" in summary
    assert "t over seeds" in summary


def test_variant_summaries_give_means_t_intervals_and_mark_differences_within_noise():
    from tuna.report.compare_report import pareto_front, tradeoff_points, variant_summaries, within_noise

    def run(task, ppl):
        return {"status": "done", "scores": {"task": task, "task_items": [], "general_ppl": ppl, "general_mc": 0.5},
                "trainable_params": 1, "peak_memory_mb": 1, "tokens_per_s": 1, "train_seconds": 1}

    results = {"base": {"task": 0.5, "general_ppl": 10.0, "general_mc": 0.5}, "seeds": [1, 2, 3], "variants": {
        "a@seed1": run(0.80, 10.1), "a@seed2": run(0.82, 10.2), "a@seed3": run(0.84, 10.3),
        "b@seed1": run(0.70, 10.2), "b@seed2": run(0.85, 10.5), "b@seed3": run(0.76, 10.4),  # worse on means, noisy
        "c@seed1": run(0.60, 10.6), "c@seed2": run(0.61, 10.6), "c@seed3": run(0.62, 10.6)}}  # clearly worse
    rows = {row["variant"]: row for row in variant_summaries(results)}
    assert rows["a"]["task after"] == pytest.approx(0.82)
    low, high = rows["a"]["task after ci"]
    assert (high - low) / 2 == pytest.approx(4.303 * 0.02 / 3 ** 0.5)  # t(0.975, 2) * sd / sqrt(3)
    assert rows["a"]["gain (pts)"] == pytest.approx(32.0)
    points = tradeoff_points(list(rows.values()))
    front = pareto_front(points)
    assert front == ["a"]
    assert within_noise(points, front) == {"b": "a"}


def test_a_single_run_gets_a_bootstrap_interval_over_task_items():
    from tuna.report.compare_report import variant_summaries

    entry = {"status": "done", "scores": {"task": 0.5, "task_items": [1.0, 0.0] * 20}, "trainable_params": 1,
             "peak_memory_mb": 1, "tokens_per_s": 1, "train_seconds": 1}
    row = variant_summaries({"base": {"task": 0.25}, "variants": {"a": entry}})[0]
    low, high = row["task after ci"]
    assert low < 0.5 < high and high - low == pytest.approx(2 * 1.96 * (0.25 / 40) ** 0.5, abs=0.05)
    assert row["gain (pts) ci"] == pytest.approx((100 * (low - 0.25), 100 * (high - 0.25)))


def test_an_empty_seed_list_is_one_line(tmp_path, tiny_model_dir, chat_data, capsys):
    path = write_matrix(tmp_path, tiny_model_dir, chat_data, ["lora"])
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "seeds": []}))
    assert main(["compare", str(path)]) == 2
    err = capsys.readouterr().err
    assert "seeds" in err and len(err.strip().splitlines()) == 1


def test_harness_tasks_score_the_task_and_forgetting(tiny_model_dir, chat_data, tmp_path):
    pytest.importorskip("lm_eval")
    from tests.eval.test_harness import QUESTIONS, TASK_YAML

    tasks = tmp_path / "tasks"
    (tasks / "data").mkdir(parents=True)
    (tasks / "tiny_mc.yaml").write_text(TASK_YAML)
    (tasks / "data" / "tiny_mc.jsonl").write_text("".join(
        json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    path = write_matrix(tmp_path, tiny_model_dir, chat_data, ["lora"])
    matrix = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**matrix, "task": {"harness": ["tiny_mc"], "metric": "acc"},
                                    "general": {"suite": False, "harness": ["tiny_mc"]},
                                    "harness_include": [str(tasks)]}))
    results = run_compare(path, progress=False)
    base, lora = results["base"], results["variants"]["lora"]["scores"]
    assert len(base["task_items"]) == len(QUESTIONS) and set(base["task_items"]) <= {0.0, 1.0}
    assert base["task"] == sum(base["task_items"]) / len(QUESTIONS) == base["general_harness"]
    assert "general_ppl" not in lora and lora["general_harness"] == lora["task"]
    summary = (tmp_path / "compare" / "summary.md").read_text()
    assert "general harness change (pts)" in summary and "general harness" in summary.splitlines()[0]

    path.write_text(yaml.safe_dump({**matrix, "task": {"harness": ["no_such_task"]}}))
    with pytest.raises(UserError, match="no_such_task"):
        run_compare(path, progress=False)
