import torch

from tuna.methods import REGISTRY
from tuna.methods.chain_lora import lora_layers
from tuna.models.load import load_base

CHAIN = REGISTRY["chain_lora"]


def prepared(tiny_model_dir, tiny_recipe, rounds=3):
    model, _ = load_base(str(tiny_model_dir))
    recipe = tiny_recipe(method="chain_lora", chain_lora={"rounds": rounds}, lora={"r": 4, "dropout": 0.0})
    return CHAIN.prepare(model, recipe), recipe


def pretend_trained(model, seed):
    """Random B factors from a private generator (the global RNG is what re-initialisation draws from)."""
    generator = torch.Generator().manual_seed(seed)
    for layer in lora_layers(model).values():
        b = layer.lora_B["default"].weight
        b.data.copy_(torch.randn(b.shape, generator=generator) * 0.1)


def test_a_round_boundary_merges_the_adapter_and_restarts_it(tiny_model_dir, tiny_recipe):
    model, recipe = prepared(tiny_model_dir, tiny_recipe)
    assert CHAIN.on_step_start(model, recipe, 0, 9) is False
    pretend_trained(model, 0)
    layers = lora_layers(model)
    before = {n: (l.get_base_layer().weight.detach().clone(), l.get_delta_weight("default").detach().clone(),
                  l.lora_A["default"].weight.detach().clone()) for n, l in layers.items()}
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        logits = model(ids).logits
    assert CHAIN.on_step_start(model, recipe, 2, 9) is False  # still round 0
    assert CHAIN.on_step_start(model, recipe, 3, 9) is True  # round 1 starts
    for name, layer in layers.items():
        weight, delta, a = before[name]
        torch.testing.assert_close(layer.get_base_layer().weight, weight + delta, atol=1e-6, rtol=0)  # merged
        assert torch.count_nonzero(layer.lora_B["default"].weight) == 0  # fresh adapter: B = 0
        assert not torch.equal(layer.lora_A["default"].weight, a), name  # and a new random A
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, logits, atol=1e-5, rtol=1e-5)  # the function is unchanged
    assert len(model.tuna_chain) == 1


def test_saved_adapter_holds_every_round_and_loads_with_plain_peft(tiny_model_dir, tiny_recipe, tmp_path):
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, recipe = prepared(tiny_model_dir, tiny_recipe, rounds=3)
    for round_index, step in enumerate((3, 6)):
        pretend_trained(model, round_index)
        CHAIN.on_step_start(model, recipe, step, 9)
    pretend_trained(model, 7)  # the last round, not merged
    CHAIN.save_final(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 4 * 3
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, model.eval()(ids).logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(plain(ids).logits, base(ids).logits, atol=1e-3)
