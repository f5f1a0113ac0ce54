"""Bad input gives exit code 2 and one readable line, never a traceback; the commands work end to end."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tuna.cli import main
from tuna.rundir import read_metrics


def write_config(tmp_path, tiny_model_dir, data_path, **changes):
    raw = {"model": str(tiny_model_dir), "data": {"path": str(data_path), "eval_split": 0.2},
           "train": {"max_steps": 4, "micro_batch_size": 4, "lr": 1e-2, "device": "cpu", "precision": "fp32"},
           "output_dir": str(tmp_path / "run")}
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


BAD_DATA = {
    "malformed": ('{"text": "fine"}\n{"text": broken\n', "line 2 is not valid JSON"),
    "empty": ("", "the dataset is empty"),
    "no_targets": (json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n", "no example has trainable tokens"),
    "unknown_role": (json.dumps({"messages": [{"role": "robot", "content": "hi"}]}) + "\n", "unknown role 'robot'"),
    "unknown_shape": (json.dumps({"question": "q", "answer": "a"}) + "\n", "cannot tell the data format"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_exits_2_with_one_message(case, tmp_path, tiny_model_dir, capsys):
    content, message = BAD_DATA[case]
    data = tmp_path / "data.jsonl"
    data.write_text(content)
    code, _, err = run_cli(["train", str(write_config(tmp_path, tiny_model_dir, data)), "--no-progress"], capsys)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("tuna: error:")


BAD_CONFIG = {
    "missing_data": ({"data__path": "/nonexistent/data.jsonl"}, "data file not found: /nonexistent/data.jsonl"),
    "unknown_format": ({"data__format": "chatml"}, "data.format: Input should be"),
    "cuda_absent": ({"train__device": "cuda"}, "no CUDA device is available"),
    "fp16_on_cpu": ({"train__precision": "fp16"}, "fp16 needs a CUDA device"),
    "other_method_knobs": ({"method": "full", "lora": {"r": 8}}, "`lora.*` knobs are set but method is `full`"),
    "typo": ({"train__micro_batch": 2}, "did you mean `train.micro_batch_size`"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIG))
def test_bad_config_exits_2_with_one_message(case, tmp_path, tiny_model_dir, chat_data, capsys):
    if case == "cuda_absent" and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    changes, message = BAD_CONFIG[case]
    code, _, err = run_cli(["train", str(write_config(tmp_path, tiny_model_dir, chat_data, **changes))], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_missing_config_and_checkpoint_of_another_model(tmp_path, tiny_dirs, chat_data, capsys):
    code, _, err = run_cli(["train", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "config file not found" in err
    config = write_config(tmp_path, tiny_dirs["llama"], chat_data, train__save_every=2)
    assert run_cli(["train", str(config), "--no-progress"], capsys)[0] == 0
    code, _, err = run_cli(["train", "--resume", str(tmp_path / "run"), "--set", f"model.name={tiny_dirs['qwen2']}",
                            "--set", "train.max_steps=8"], capsys)
    assert code == 2 and "was made for a different model" in err


def test_train_then_eval_generate_and_chat_on_the_run(tmp_path, tiny_model_dir, chat_data, capsys, monkeypatch):
    config = write_config(tmp_path, tiny_model_dir, chat_data)
    code, out, _ = run_cli(["train", str(config), "--no-progress"], capsys)
    assert code == 0 and "done: 4 steps" in out
    run = str(tmp_path / "run")

    code, out, _ = run_cli(["eval", "--model", run, "--data", str(chat_data)], capsys)
    result = json.loads(out)
    assert code == 0 and result["examples"] == 40 and math.isclose(result["ppl"], math.exp(result["loss"]))

    from tuna.eval.generate import generate
    from tuna.models.load import load_any

    model, tokenizer = load_any(run)
    expected = generate(model, tokenizer, [[{"role": "user", "content": "what is 3 + 3?"}]], max_new_tokens=8)[0]
    code, out, _ = run_cli(["generate", "--model", run, "--prompt", "what is 3 + 3?", "--max-new-tokens", "8"], capsys)
    assert code == 0 and out == expected + "\n"

    lines = iter(["what is 3 + 3?", "/reset", "what is 3 + 3?", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    code, out, _ = run_cli(["chat", "--model", run, "--max-new-tokens", "8"], capsys)
    assert code == 0 and out.count(f"model> {expected}") == 2  # /reset makes the second turn a fresh conversation


def test_real_entry_point_hides_the_traceback_unless_debug(tmp_path):
    command = [sys.executable, "-m", "tuna", "train", str(tmp_path / "absent.yaml")]
    plain = subprocess.run(command, capture_output=True, text=True)
    assert plain.returncode == 2 and plain.stderr.strip() == f"tuna: error: config file not found: {tmp_path / 'absent.yaml'}"
    debug = subprocess.run(command + ["--debug"], capture_output=True, text=True)
    assert "Traceback" in debug.stderr and "UserError" in debug.stderr


def test_ctrl_c_saves_a_resumable_checkpoint(tmp_path, tiny_model_dir, chat_data):
    config = write_config(tmp_path, tiny_model_dir, chat_data, train__max_steps=300, train__save_every=0,
                          eval={"every": 0})
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tuna", "train", str(config), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and len(read_metrics(run / "metrics.jsonl")) >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    stopped_at = read_metrics(run / "metrics.jsonl")[-1]["step"]
    assert 3 <= stopped_at < 300
    assert (run / "checkpoints" / f"step-{stopped_at:07d}").is_dir()
    assert f"stopped at step {stopped_at}; resume with: tuna train --resume {run}" in err

    done = subprocess.run([sys.executable, "-m", "tuna", "train", "--resume", str(run), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, 301))


def test_data_synth_retrieval_writes_messages_jsonl(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "retrieval.jsonl"
    code, stdout, _ = run_cli(["data", "synth", "retrieval", "--out", str(out), "--n", "4", "--lengths", "600,0.75k",
                               "--positions", "0,1", "--model", str(tiny_model_dir)], capsys)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 0 and f"wrote 4 examples to {out}" in stdout
    assert [(r["target_tokens"], r["position"]) for r in rows] == [(600, 0.0), (600, 1.0), (768, 0.0), (768, 1.0)]
    assert all(r["tokens"] <= r["target_tokens"] and [m["role"] for m in r["messages"]] == ["user", "assistant"]
               for r in rows)


def test_eval_needle_writes_json_and_heatmap(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "needle"
    code, stdout, _ = run_cli(["eval", "needle", "--model", str(tiny_model_dir), "--lengths", "300,400",
                               "--depths", "0,0.5,1", "--out", str(out)], capsys)
    result = json.loads((out / "needle.json").read_text())
    assert code == 0 and "depth \\ length" in stdout
    assert result["settings"]["lengths"] == [300, 400] and result["settings"]["depths"] == [0.0, 0.5, 1.0]
    assert len(result["accuracy"]) == 3 and all(len(row) == 2 for row in result["accuracy"])
    assert (out / "needle.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_needle_beyond_the_context_window_exits_2(tiny_model_dir, capsys):
    code, _, err = run_cli(["eval", "needle", "--model", str(tiny_model_dir), "--lengths", "256,1k"], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip() == ("tuna: error: length 1024 is beyond the model's context window of 512 tokens (config "
                           "max_position_embeddings; 32 more are kept for the answer); use shorter lengths or "
                           "extend the window with model.rope_scaling")


def test_eval_with_metrics_writes_scores_and_predictions(tmp_path, tiny_model_dir, chat_data, capsys):
    out = tmp_path / "scores"
    code, stdout, _ = run_cli(["eval", "--model", str(tiny_model_dir), "--data", str(chat_data),
                               "--metric", "exact_match,qa_f1", "--max-new-tokens", "3", "--out", str(out)], capsys)
    summary = json.loads(stdout)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert code == 0 and summary == json.loads((out / "scores.json").read_text()) and summary["count"] == 40
    assert [r["id"] for r in rows] == list(range(40)) and rows[3]["gold"] == ["6"]
    for metric in ("exact_match", "qa_f1"):
        assert summary["metrics"][metric] == pytest.approx(sum(r["scores"][metric] for r in rows) / 40)


@pytest.mark.parametrize("metric, message", [
    ("classification", "metric classification needs `all_classes` in every record; record 1 has none"),
    ("qa_f1,blue", "unknown metric 'blue'"),
])
def test_eval_metric_the_data_cannot_support_exits_2_before_loading(metric, message, chat_data, capsys, monkeypatch):
    monkeypatch.setattr("tuna.cli._load", lambda spec: pytest.fail("loaded the model"))
    code, _, err = run_cli(["eval", "--model", "unused", "--data", str(chat_data), "--metric", metric], capsys)
    assert code == 2 and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_eval_needle_is_found_after_global_options_only():
    from tuna.cli import route_eval_needle

    assert route_eval_needle(["--debug", "eval", "needle", "--lengths", "1k"]) == ["--debug", "eval-needle", "--lengths", "1k"]
    assert route_eval_needle(["eval", "--data", "needle"]) == ["eval", "--data", "needle"]
