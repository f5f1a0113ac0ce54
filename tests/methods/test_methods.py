import pytest
import torch

from tuna.errors import UserError
from tuna.methods import REGISTRY
from tuna.models.layers import count_parameters, decoder_layers
from tuna.models.load import load_base
from tuna.train.loop import train


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_freeze_trains_only_the_top_layers(tiny_recipe, tiny_model_dir, tmp_path):
    before = snapshot(load_base(str(tiny_model_dir))[0])
    train(tiny_recipe(method="freeze", freeze={"trainable_layers": 1}, train={"max_steps": 3, "lr": 1e-2}), progress=False)
    after = snapshot(load_base(str(tmp_path / "run" / "final"))[0])
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.startswith("model.layers.1.") for n in changed)
    assert {n for n in before if n.startswith("model.layers.1.")} == changed  # every top-layer tensor moved


def test_freeze_rejects_more_layers_than_the_model_has(tiny_recipe):
    with pytest.raises(UserError, match="freeze.trainable_layers is 5 but the model has only 2 layers"):
        train(tiny_recipe(method="freeze", freeze={"trainable_layers": 5}), progress=False)


def test_full_trains_every_parameter(tiny_model_dir, tiny_recipe):
    model, _ = load_base(str(tiny_model_dir))
    model = REGISTRY["full"].from_recipe(tiny_recipe(method="full")).prepare(model)
    trainable, total = count_parameters(model)
    assert trainable == total > 0


def test_lora_adapter_loads_with_plain_peft(tiny_recipe, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    train(tiny_recipe(train={"max_steps": 4, "lr": 5e-2}), progress=False)
    final = tmp_path / "run" / "final"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    base_logits = base(ids).logits
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), final)
    lora_modules = {n.split(".lora_A")[0] for n, _ in adapted.named_parameters() if "lora_A" in n}
    assert len(lora_modules) == 2 * 7  # all linear layers of 2 blocks: q k v o gate up down
    assert not torch.allclose(adapted(ids).logits, base_logits)


def test_lora_unknown_target_module_names_the_real_ones(tiny_recipe):
    with pytest.raises(UserError, match=r"\['qkv'\] not in the model; its linear modules are: .*q_proj"):
        train(tiny_recipe(lora={"target_modules": ["qkv"]}), progress=False)


def test_decoder_layers_found_for_llama_and_qwen2(tiny_dirs):
    for directory in tiny_dirs.values():
        model, _ = load_base(str(directory))
        assert len(decoder_layers(model)) == model.config.num_hidden_layers


def test_dora_adds_trained_magnitude_vectors_and_loads_with_plain_peft(tiny_recipe, tiny_model_dir, tmp_path):
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    train(tiny_recipe(method="dora", lora={"r": 4}, train={"max_steps": 3, "lr": 5e-2}), progress=False)
    final = tmp_path / "run" / "final"
    assert json.loads((final / "adapter_config.json").read_text())["use_dora"] is True
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), final)
    fresh = REGISTRY["dora"].from_recipe(tiny_recipe(method="dora", lora={"r": 4})).prepare(load_base(str(tiny_model_dir))[0])
    magnitudes = {n: p for n, p in fresh.named_parameters() if "lora_magnitude_vector" in n}
    assert len(magnitudes) == 14 and all(p.requires_grad for p in magnitudes.values())
    trained = dict(adapted.named_parameters())
    assert any(not torch.allclose(trained[n], p) for n, p in magnitudes.items())  # the magnitudes were trained


def test_rslora_scales_by_alpha_over_sqrt_r(tiny_recipe, tiny_model_dir):
    plain = REGISTRY["lora"].from_recipe(tiny_recipe(lora={"r": 16, "alpha": 8})).prepare(load_base(str(tiny_model_dir))[0])
    stable = REGISTRY["rslora"].from_recipe(tiny_recipe(method="rslora", lora={"r": 16, "alpha": 8})).prepare(
        load_base(str(tiny_model_dir))[0])
    q_plain = plain.base_model.model.model.layers[0].self_attn.q_proj
    q_stable = stable.base_model.model.model.layers[0].self_attn.q_proj
    assert q_plain.scaling["default"] == pytest.approx(8 / 16)
    assert q_stable.scaling["default"] == pytest.approx(8 / 4)
