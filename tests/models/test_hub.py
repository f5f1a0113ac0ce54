"""Adapters name their base by hub id, so plain PEFT loads them wherever that id resolves."""
import json
import shutil

import pytest
import torch
import yaml

from tests.hub_cache import use_hub_cache
from tuna.errors import UserError
from tuna.methods import REGISTRY as METHODS
from tuna.models import load
from tuna.models.hub import hub_id, license_of
from tuna.train.loop import save_portable, train

HUB = "tuna-test/tiny-llama"
IDS = torch.tensor([[1, 40, 41, 42, 43, 44]])


def logits(model):
    with torch.no_grad():
        return model.eval()(IDS).logits


def test_the_embedded_alias_is_named_by_its_hub_id_in_the_saved_adapter(tiny_model_dir, tmp_path, monkeypatch):
    def no_conversion(*args):
        raise AssertionError("naming the base must not load or convert the embedded model")

    monkeypatch.setattr(load, "cached_checkpoint", no_conversion)
    model, _ = load.load_base(str(tiny_model_dir))
    method = METHODS["lora"]()
    save_portable(method, method.prepare(model), tmp_path / "adapter", "smollm2-135m")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert license_of("smollm2-135m") == "apache-2.0"


def test_a_local_base_is_named_by_its_absolute_path_and_a_hub_id_as_given(tiny_model_dir, tmp_path, monkeypatch):
    shutil.copytree(tiny_model_dir, tmp_path / "models" / "tiny")
    monkeypatch.chdir(tmp_path)
    assert hub_id("models/tiny") == str(tmp_path / "models" / "tiny")
    assert hub_id(HUB) == HUB


def test_the_embedded_hub_id_stands_for_the_embedded_model_when_it_is_not_cached(tmp_path, monkeypatch):
    use_hub_cache(tmp_path, monkeypatch, {})
    monkeypatch.setattr(load, "embedded", lambda alias: f"<embedded {alias}>")
    assert load.resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == "<embedded smollm2-135m>"
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        load.resolve("HuggingFaceTB/SmolLM2-360M-Instruct")


def test_plain_peft_loads_a_tuna_adapter_by_the_hub_id_of_its_base(tiny_recipe, tiny_model_dir, tmp_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    model_dir = tmp_path / "with-card"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")
    use_hub_cache(tmp_path, monkeypatch, {HUB: model_dir})
    run = tmp_path / "run"
    train(tiny_recipe(model={"name": HUB}, lora={"dropout": 0.0}, train={"max_steps": 4, "lr": 5e-2}), progress=False)
    for adapter in (run / "final", run / "checkpoints" / "step-0000004" / "adapter"):
        assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB

    tuna_model, _ = load.load_any(str(run))  # tuna's own loading: the base from config.yaml, as before
    expected = logits(tuna_model)
    assert (expected - logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir))).abs().max() > 1e-3
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(HUB), run / "final")
    torch.testing.assert_close(logits(plain), expected)
    torch.testing.assert_close(logits(AutoPeftModelForCausalLM.from_pretrained(run / "final")), expected)

    card = (run / "final" / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["base_model"] == HUB and front["license"] == "mit" and front["library_name"] == "peft"
