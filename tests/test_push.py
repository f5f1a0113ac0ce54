"""`tuna export RUN --push-to-hub REPO [--dry-run DIR]`: the folder that goes up, offline, and a push without
network as one line."""
import json

import huggingface_hub
import pytest
import yaml

from tests.hub_cache import use_hub_cache
from tuna.cli import main
from tuna.train.loop import train

HUB = "tuna-test/tiny-llama"


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def no_upload(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dry run must not reach the Hub")

    monkeypatch.setattr(huggingface_hub, "HfApi", refuse)


def test_a_dry_run_writes_the_adapter_folder_naming_its_base_by_hub_id(tiny_recipe, tiny_model_dir, tmp_path,
                                                                         monkeypatch, no_upload, capsys):
    use_hub_cache(tmp_path, monkeypatch, {HUB: tiny_model_dir})
    train(tiny_recipe(model={"name": HUB}, train={"max_steps": 2}), progress=False)
    run, out = tmp_path / "run", tmp_path / "upload"
    config_file = run / "final" / "adapter_config.json"  # as a tuna before hub ids wrote it: a local path
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "base_model_name_or_path": "/x"}))

    code, printed, err = cli(capsys, "export", run, "--push-to-hub", "someone/tiny-lora", "--dry-run", out)
    assert code == 0, err
    files = {f.name for f in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json"} <= files
    assert "config.json" not in files and "someone/tiny-lora" in printed
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["base_model"] == HUB and front["library_name"] == "peft"
    assert 'Auto.from_pretrained("someone/tiny-lora")' in card

    code, _, err = cli(capsys, "export", run, "--push-to-hub", "someone/tiny-lora", "--dry-run", out)
    assert code == 2 and "exists and is not empty" in err


def test_a_sparse_delta_goes_up_merged(tiny_recipe, tmp_path, no_upload, capsys):
    train(tiny_recipe(method="sparse", train={"max_steps": 2}), progress=False)
    out = tmp_path / "upload"
    code, _, err = cli(capsys, "export", tmp_path / "run", "--push-to-hub", "someone/tiny", "--dry-run", out)
    assert code == 0, err
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert yaml.safe_load((out / "README.md").read_text().split("---\n")[1])["library_name"] == "transformers"


def test_a_push_without_network_is_one_line(tiny_recipe, tmp_path, monkeypatch, capsys):
    train(tiny_recipe(train={"max_steps": 2}), progress=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    capsys.readouterr()  # what training printed
    code, _, err = cli(capsys, "export", tmp_path / "run", "--push-to-hub", "someone/tiny")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("tuna: error: cannot push to the Hugging Face Hub repository someone/tiny: ")
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # tuna's offline mode is back


def test_dry_run_needs_a_repository_and_push_goes_alone(tmp_path, capsys):
    code, _, err = cli(capsys, "export", tmp_path, "--dry-run", tmp_path / "out")
    assert code == 2 and "--dry-run goes with --push-to-hub REPO" in err
    code, _, err = cli(capsys, "export", tmp_path, "--push-to-hub", "a/b", "--merge", tmp_path / "out")
    assert code == 2 and "leave out --merge" in err
