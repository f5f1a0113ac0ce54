"""`tuna serve` refuses what it cannot serve in one line (exit 2) before loading anything."""
import json

import pytest

from tests.test_cli import run_cli
from tuna.serve import vllm


def one_line_exit_2(args, capsys, says):
    code, _, err = run_cli(args, capsys)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("adapter, says", [("paris", "expected NAME=RUN"), ("=x", "expected NAME=RUN"),
                                           ("a=/no/such/run", "adapter not found")])
def test_a_bad_adapter_argument(tiny_model_dir, capsys, adapter, says):
    one_line_exit_2(["serve", str(tiny_model_dir), "--adapter", adapter], capsys, says)


def test_an_adapter_name_used_twice_or_by_the_base(tiny_model_dir, adapter_runs, capsys):
    run = str(adapter_runs["paris"])
    one_line_exit_2(["serve", str(tiny_model_dir), "--adapter", f"a={run}", "--adapter", f"a={run}"], capsys, "taken")
    one_line_exit_2(["serve", str(tiny_model_dir), "--name", "a", "--adapter", f"a={run}"], capsys, "taken")


def test_a_full_run_is_not_an_adapter(tiny_recipe, tiny_model_dir, tmp_path, capsys):
    from tuna.train.loop import train

    train(tiny_recipe(method="full", train={"max_steps": 1}), progress=False)
    capsys.readouterr()
    one_line_exit_2(["serve", str(tiny_model_dir), "--adapter", f"f={tmp_path / 'run'}"], capsys, "not an adapter")


def test_an_adapter_of_another_base_is_refused(tiny_dirs, adapter_runs, capsys):
    one_line_exit_2(["serve", str(tiny_dirs["qwen2"]), "--adapter", f"p={adapter_runs['paris']}"], capsys,
                    "was trained on")


def test_a_missing_server_package_gets_a_pip_hint(tiny_model_dir, capsys, monkeypatch):
    from tuna.serve import run

    monkeypatch.setattr(run, "importable", lambda module: module != "sse_starlette")
    one_line_exit_2(["serve", str(tiny_model_dir)], capsys, "pip install 'tuna[serve]'")


def test_the_vllm_engine_runs_vllms_own_server_with_the_same_adapters(tiny_model_dir, adapter_runs):
    command = vllm.vllm_command(str(tiny_model_dir), {"paris": str(adapter_runs["paris"])}, host="0.0.0.0",
                                port=9000, name="tiny", max_batch=32)
    rank = json.loads((adapter_runs["paris"] / "final" / "adapter_config.json").read_text())["r"]
    assert command[:3] == ["vllm", "serve", str(tiny_model_dir)]
    assert command[command.index("--lora-modules") + 1] == f"paris={adapter_runs['paris'] / 'final'}"
    assert "--enable-lora" in command and int(command[command.index("--max-lora-rank") + 1]) >= rank
    assert command[command.index("--served-model-name") + 1] == "tiny"


def test_the_vllm_engine_without_vllm_is_one_line(tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setattr(vllm.shutil, "which", lambda name: None)
    one_line_exit_2(["serve", str(tiny_model_dir), "--engine", "vllm"], capsys, "pip install vllm")


def test_a_port_in_use_is_one_line_before_the_model_loads(tiny_model_dir, capsys, monkeypatch):
    import socket

    from tuna.serve import run

    monkeypatch.setattr(run, "build", lambda *a, **k: pytest.fail("the model loaded before the port was checked"))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        one_line_exit_2(["serve", str(tiny_model_dir), "--port", str(port)], capsys, f"cannot listen on 127.0.0.1:{port}")
