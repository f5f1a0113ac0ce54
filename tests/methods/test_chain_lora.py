import torch

from tuna.methods import REGISTRY
from tuna.methods.chain_lora import lora_layers
from tuna.models.load import load_base
from tuna.train.loop import train

CHAIN = REGISTRY["chain_lora"]


def prepared(tiny_model_dir, tiny_recipe, rounds=3):
    """(the prepared model, the ChainLora instance that prepared it and keeps its rounds)."""
    model, _ = load_base(str(tiny_model_dir))
    recipe = tiny_recipe(method="chain_lora", chain_lora={"rounds": rounds}, lora={"r": 4, "dropout": 0.0})
    chain = CHAIN.from_recipe(recipe)
    return chain.prepare(model), chain


def pretend_trained(model, seed):
    """Random B factors from a private generator (the global RNG is what re-initialisation draws from)."""
    generator = torch.Generator().manual_seed(seed)
    for layer in lora_layers(model).values():
        b = layer.lora_B["default"].weight
        b.data.copy_(torch.randn(b.shape, generator=generator) * 0.1)


def test_a_round_boundary_merges_the_adapter_and_restarts_it(tiny_model_dir, tiny_recipe):
    model, chain = prepared(tiny_model_dir, tiny_recipe)
    assert chain.on_step_start(model, 0, 9) is False
    pretend_trained(model, 0)
    layers = lora_layers(model)
    before = {n: (l.get_base_layer().weight.detach().clone(), l.get_delta_weight("default").detach().clone(),
                  l.lora_A["default"].weight.detach().clone()) for n, l in layers.items()}
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        logits = model(ids).logits
    assert chain.on_step_start(model, 2, 9) is False  # still round 0
    assert chain.on_step_start(model, 3, 9) is True  # round 1 starts
    for name, layer in layers.items():
        weight, delta, a = before[name]
        torch.testing.assert_close(layer.get_base_layer().weight, weight + delta, atol=1e-6, rtol=0)  # merged
        assert torch.count_nonzero(layer.lora_B["default"].weight) == 0  # fresh adapter: B = 0
        assert not torch.equal(layer.lora_A["default"].weight, a), name  # and a new random A
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, logits, atol=1e-5, rtol=1e-5)  # the function is unchanged
    assert len(chain.rounds) == 1


def test_saved_adapter_holds_every_round_and_loads_with_plain_peft(tiny_model_dir, tiny_recipe, tmp_path):
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, chain = prepared(tiny_model_dir, tiny_recipe, rounds=3)
    for round_index, step in enumerate((3, 6)):
        pretend_trained(model, round_index)
        chain.on_step_start(model, step, 9)
    pretend_trained(model, 7)  # the last round, not merged
    chain.save_final(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 4 * 3
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, model.eval()(ids).logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(plain(ids).logits, base(ids).logits, atol=1e-3)


def test_training_across_a_round_boundary_merges_round_one_and_saves_both_rounds(tiny_model_dir, tiny_recipe,
                                                                                tmp_path, monkeypatch):
    """Through the training loop: 2 rounds over 4 steps, so the per-step hook merges round 1 into the base
    at step 2 and restarts the adapter. Without the hook nothing merges and the adapter saves at rank r."""
    import json

    from safetensors.torch import load_file

    seen = {}
    real = CHAIN.save_final

    def keep(self, model, out):
        seen["method"], seen["model"] = self, model
        real(self, model, out)

    monkeypatch.setattr(CHAIN, "save_final", keep)
    r = 4
    train(tiny_recipe(method="chain_lora", chain_lora={"rounds": 2}, lora={"r": r, "dropout": 0.0},
                      train={"max_steps": 4, "lr": 5e-2}, eval={"every": 0}), progress=False)
    final = tmp_path / "run" / "final"
    assert json.loads((final / "adapter_config.json").read_text())["r"] == r * 2
    chain, model = seen["method"], seen["model"]
    assert len(chain.rounds) == 1  # round 1 merged; round 2 is the live adapter
    original = dict(load_base(str(tiny_model_dir))[0].named_parameters())
    saved = load_file(final / "adapter_model.safetensors")
    layers = lora_layers(model)
    assert len(layers) == 2 * 7
    for name, layer in layers.items():
        b, a = chain.rounds[0][name]  # round 1: scaled B, A
        assert torch.count_nonzero(b) > 0, name  # round 1 trained B away from its zero init
        # the base absorbed round 1, exactly W0 + scaling·B·A, and nothing else
        base_weight = original[name.removeprefix("base_model.model.") + ".weight"]
        torch.testing.assert_close(layer.get_base_layer().weight, base_weight + b @ a, atol=1e-6, rtol=1e-6)
        # the saved adapter: round 1's factors, then round 2's fresh and trained ones
        saved_a, saved_b = saved[f"{name}.lora_A.weight"], saved[f"{name}.lora_B.weight"]
        assert saved_a.shape[0] == saved_b.shape[1] == 2 * r
        torch.testing.assert_close(saved_a[:r], a)
        torch.testing.assert_close(saved_b[:, :r], b)
        live_b = (layer.lora_B["default"].weight * layer.scaling["default"]).detach()
        torch.testing.assert_close(saved_a[r:], layer.lora_A["default"].weight.detach())
        torch.testing.assert_close(saved_b[:, r:], live_b)
        assert torch.count_nonzero(live_b) > 0, name  # round 2 trained its restarted adapter
        assert not torch.equal(saved_a[r:], a), name  # from a fresh A
