import pytest

from tuna.errors import UserError
from tuna.models.load import load_any, resolve


def test_local_checkpoint_directory_loads_with_its_tokenizer(tiny_model_dir):
    model, tokenizer = load_any(str(tiny_model_dir))
    assert model.config.model_type == "llama" and tokenizer.chat_template


def test_hub_id_resolves_from_the_offline_cache_only(tiny_model_dir, tmp_path, monkeypatch):
    # Lay out a Hugging Face cache entry by hand, as a previous `from_pretrained` would have.
    import shutil

    cache = tmp_path / "hub"
    snapshot = cache / "models--tiny-org--tiny-llama" / "snapshots" / "0123abc"
    shutil.copytree(tiny_model_dir, snapshot)
    (cache / "models--tiny-org--tiny-llama" / "refs").mkdir()
    (cache / "models--tiny-org--tiny-llama" / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert resolve("tiny-org/tiny-llama") == "tiny-org/tiny-llama"
    model, _ = load_any("tiny-org/tiny-llama")
    assert model.config.hidden_size == 32
    with pytest.raises(UserError, match="not in the local Hugging Face cache, and tuna never downloads"):
        resolve("tiny-org/absent-model")


def test_missing_paths_get_clear_errors(tmp_path):
    with pytest.raises(UserError, match="GGUF file not found"):
        resolve(str(tmp_path / "m.gguf"))
    with pytest.raises(UserError, match="model not found"):
        resolve(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a model directory"):
        resolve(str(tmp_path / "empty"))


def test_a_file_that_is_not_gguf_or_is_damaged_is_refused_without_a_cache_entry(tmp_path, monkeypatch):
    from tuna.models.gguf_cache import tuna_home

    monkeypatch.setenv("TUNA_HOME", str(tmp_path / "home"))
    (tmp_path / "text.gguf").write_text("not a model")
    with pytest.raises(UserError, match="text.gguf is not a GGUF file"):
        resolve(str(tmp_path / "text.gguf"))
    (tmp_path / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\x07")  # the header, cut off
    with pytest.raises(UserError, match="cannot convert .*cut.gguf"):
        resolve(str(tmp_path / "cut.gguf"))
    models = tuna_home() / "models"
    assert not models.exists() or not any(models.iterdir())  # nothing half-converted is left to be trusted


# ---------------------------------------------------------------- adapters and checkpoints of other tools

@pytest.fixture
def peft_adapter(tiny_model_dir, tmp_path):
    """A LoRA adapter written by plain PEFT (not tuna), with non-zero weights, naming its base by path."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"],
                                      init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def cli(capsys, *argv):
    from tuna.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_eval_and_generate_take_an_adapter_directory_of_another_tool(peft_adapter, tiny_model_dir, chat_data, capsys):
    import json

    assert not (peft_adapter / "config.json").exists()
    results = {}
    for model in (peft_adapter, tiny_model_dir):
        code, out, err = cli(capsys, "eval", "--model", str(model), "--data", str(chat_data))
        assert code == 0, err
        loss = json.loads(out)["loss"]
        code, out, err = cli(capsys, "generate", "--model", str(model), "--prompt", "what is 3 + 3?",
                             "--max-new-tokens", "8")
        assert code == 0, err
        results[model] = (loss, out)
    (adapted_loss, adapted_text), (base_loss, base_text) = results[peft_adapter], results[tiny_model_dir]
    assert abs(adapted_loss - base_loss) > 1e-3 and adapted_text != base_text  # the adapter is applied


def test_an_adapter_whose_base_cannot_be_opened_is_one_line(peft_adapter, tmp_path, capsys):
    import json

    config = json.loads((peft_adapter / "adapter_config.json").read_text())
    (peft_adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "org/absent"}))
    code, out, err = cli(capsys, "generate", "--model", str(peft_adapter), "--prompt", "hi")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "is for the base model 'org/absent', which tuna cannot open: hub model 'org/absent' is not in" in err
    (peft_adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    with pytest.raises(UserError, match="does not name its base model"):
        load_any(str(peft_adapter))
