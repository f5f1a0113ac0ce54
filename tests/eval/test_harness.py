"""`tuna eval --harness`: lm-evaluation-harness offline on the loaded model, its acc against tuna's scorer,
an adapter applied, bad requests refused, and the shipped tasks."""
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.test_cli import run_cli
from tuna.eval.harness import SHIPPED, check_request, offline, task_manager
from tuna.eval.task import multiple_choice_accuracy
from tuna.models.load import load_any

pytest.importorskip("lm_eval")

QUESTIONS = [("what is the capital of France?", ["Paris", "Berlin", "the lazy dog", "March"], 0),
             ("what is 2 + 2?", ["4", "a tiny test model", "5", "hello world"], 2),
             ("which month comes after March?", ["April", "May 5, 2021", "June", "January"], 0),
             ("what does the fox jump over?", ["the lazy dog", "a cat", "the quick brown fox", "Paris"], 0),
             ("what is the ISO date of March 5, 2021?", ["2021-03-05", "2021-05-03", "March", "05"], 0),
             ("say hello", ["hello world", "hi", "goodbye", "question"], 1)]
TASK_YAML = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/tiny_mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.fixture
def tiny_task(tmp_path) -> Path:
    """A task directory: its YAML reads data/tiny_mc.jsonl relative to itself."""
    directory = tmp_path / "tasks"
    (directory / "data").mkdir(parents=True)
    (directory / "tiny_mc.yaml").write_text(TASK_YAML)
    rows = [{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS]
    (directory / "data" / "tiny_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def samples(path: Path) -> list[dict]:
    return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda s: s["doc_id"])


def test_harness_runs_offline_and_its_acc_is_tunas_mc_accuracy(tiny_model_dir, tiny_task, tmp_path):
    # no network: any hub or HTTP access fails; an empty Hugging Face cache; run from elsewhere than the task
    blocked = {"HF_ENDPOINT": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
               "HTTPS_PROXY": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")} | blocked
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "tuna", "eval", "--model", str(tiny_model_dir), "--harness", "tiny_mc",
                           "--include-path", str(tiny_task), "--log-samples", "--out", str(out)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tiny_mc" in done.stdout and "acc_norm" in done.stdout  # the printed table
    summary = json.loads((out / "summary.json").read_text())["tiny_mc"]
    assert json.loads((out / "results.json").read_text())["results"]["tiny_mc"]["acc,none"] == summary["acc"]["value"]
    model, tokenizer = load_any(str(tiny_model_dir))
    records = [{"prompt": f"Question: {q}\nAnswer: ", "choices": c, "answer": a} for q, c, a in QUESTIONS]
    ours = multiple_choice_accuracy(model, tokenizer, records)
    assert summary["acc"]["value"] == pytest.approx(ours["acc"])
    assert summary["acc_norm"]["value"] == pytest.approx(ours["acc_norm"])
    for theirs, row in zip(samples(out / "samples_tiny_mc.jsonl"), ours["rows"], strict=True):
        assert [float(ll) for ll, _ in theirs["filtered_resps"]] == pytest.approx(row["logprobs"], abs=1e-4)


def test_an_adapter_run_scores_differently_from_its_base(tiny_model_dir, tiny_recipe, tiny_task, tmp_path, capsys):
    from tuna.train.loop import train

    run = train(tiny_recipe(method="lora"), progress=False).run_dir
    args = ["eval", "--harness", "tiny_mc", "--include-path", str(tiny_task), "--log-samples"]
    assert run_cli([*args, "--model", str(run)], capsys)[0] == 0
    assert run_cli([*args, "--model", str(tiny_model_dir), "--out", str(tmp_path / "base")], capsys)[0] == 0
    tuned = samples(Path(run) / "harness" / "samples_tiny_mc.jsonl")  # a run directory's default --out
    base = samples(tmp_path / "base" / "samples_tiny_mc.jsonl")
    assert [s["filtered_resps"] for s in tuned] != [s["filtered_resps"] for s in base]


@pytest.mark.parametrize("case", ["unknown_task", "missing_data_file", "limit_0"])
def test_bad_requests_exit_2_with_one_line(case, tiny_model_dir, tiny_task, capsys):
    args = ["eval", "--model", str(tiny_model_dir), "--include-path", str(tiny_task)]
    if case == "unknown_task":
        args += ["--harness", "tiny_mcq"]
        expected = ["unknown harness task 'tiny_mcq'", "tuna_suite", "tuna_dates", "tuna_knowledge_mc"]
    elif case == "missing_data_file":
        (tiny_task / "data" / "tiny_mc.jsonl").unlink()
        args += ["--harness", "tiny_mc"]
        expected = ["harness task tiny_mc", "reads data/tiny_mc.jsonl, which does not exist"]
    else:
        args += ["--harness", "tiny_mc", "--limit", "0"]
        expected = ["--limit must be at least 1"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("tuna: error: ")
    assert all(text in err for text in expected), err


def test_offline_sets_the_flags_of_imported_libraries_and_restores_them():
    import huggingface_hub.constants

    before = huggingface_hub.constants.HF_HUB_OFFLINE
    with offline():
        assert huggingface_hub.constants.HF_HUB_OFFLINE and os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert huggingface_hub.constants.HF_HUB_OFFLINE == before


def test_the_shipped_tasks_load_and_the_knowledge_sets_hold_200_items():
    names = ["tuna_general", "tuna_knowledge_mc", "tuna_cloze", "tuna_dates", "tuna_arithmetic"]
    request = check_request(["tuna_suite"], [], limit=None, num_fewshot=None)
    assert not request.standard  # all local: lm-eval's own index is not built
    with offline(), tempfile.TemporaryDirectory() as staging:
        manager = task_manager(request, Path(staging))
        assert {"tuna_suite", *names} <= set(manager.all_tasks)
        tasks = manager.load(["tuna_suite"])["tasks"]
        docs = {name: list(tasks[name].test_docs()) for name in names}
    assert len(docs["tuna_knowledge_mc"]) >= 200 and len(docs["tuna_cloze"]) >= 200
    assert len(docs["tuna_general"]) == 48
    for name in ("tuna_general", "tuna_knowledge_mc", "tuna_cloze"):
        assert all(len(d["choices"]) == 4 and 0 <= d["answer"] < 4 for d in docs[name])
    assert all(d["answer"] and d["question"] for name in ("tuna_dates", "tuna_arithmetic") for d in docs[name])
    # the JSON reader makes ISO dates timestamps; the target must still be the date as written
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", tasks["tuna_dates"].doc_to_target(d)) for d in docs["tuna_dates"])
    assert (SHIPPED / "README.md").is_file()
