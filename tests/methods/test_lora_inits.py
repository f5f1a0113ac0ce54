"""LoRA initialisations through PEFT: PiSSA, EVA, CorDA (KPM / IPM), and the rank check."""
import json
import warnings

import pytest
import torch

from tuna.data.calibration import build_calibration
from tuna.data.dataset import load_splits
from tuna.errors import UserError
from tuna.methods import REGISTRY
from tuna.models.load import load_base
from tuna.train.loop import train

pytestmark = pytest.mark.filterwarnings("ignore:lora with eva initialization used with low_cpu_mem_usage")

IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [20, 21, 22, 23, 24, 25, 26, 27]])


def lora_recipe(tiny_recipe, init):
    return tiny_recipe(lora={"r": 4, "dropout": 0.0, "init": init, "calibration_batches": 2})


def calibration_for(recipe):
    _, tokenizer = load_base(recipe.model.name)
    splits = load_splits(recipe.data, tokenizer, recipe.train.seed)
    return build_calibration(splits.train, tokenizer, recipe.train.micro_batch_size, torch.device("cpu"),
                             recipe.train.seed, max_tokens=recipe.data.max_tokens)


@torch.no_grad()
def logits(model) -> torch.Tensor:
    model.eval()
    return model(IDS).logits


def base_logits(tiny_model_dir) -> torch.Tensor:
    return logits(load_base(str(tiny_model_dir))[0])


def adapters(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """LoRA module name -> (A, B) weights."""
    return {name: (m.lora_A["default"].weight.detach(), m.lora_B["default"].weight.detach())
            for name, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}


def base_weight(model, name="model.layers.0.self_attn.q_proj"):
    return model.base_model.model.get_submodule(name).base_layer.weight.detach()


# ---------------------------------------------------------------- PiSSA

def test_pissa_moves_the_principal_part_into_the_adapter_keeping_the_function(tiny_recipe, tiny_model_dir):
    original = load_base(str(tiny_model_dir))[0].model.layers[0].self_attn.q_proj.weight.detach().clone()
    model = REGISTRY["lora"].from_recipe(lora_recipe(tiny_recipe, "pissa")).prepare(load_base(str(tiny_model_dir))[0])
    residual = base_weight(model)
    assert not torch.allclose(residual, original, atol=1e-3)  # the base now holds only the residual
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    delta = q.scaling["default"] * q.lora_B["default"].weight @ q.lora_A["default"].weight
    assert torch.allclose(residual + delta, original, atol=1e-5)  # residual + principal = W
    # the principal part is W's top-4 singular directions: the residual keeps exactly the other singular values
    s = torch.linalg.svdvals(original)
    assert torch.allclose(torch.linalg.svdvals(residual)[: len(s) - 4], s[4:], atol=1e-5)
    assert torch.allclose(logits(model), base_logits(tiny_model_dir), atol=1e-5)


@pytest.mark.parametrize("init", ["pissa", "corda_kpm", "corda_ipm", "eva"])
def test_the_trained_adapter_applies_to_the_original_base(tiny_recipe, tiny_model_dir, tmp_path, monkeypatch, init):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    trained = {}
    real = REGISTRY["lora"].save_final

    def keep(self, model, out):
        trained["model"] = model
        real(self, model, out)

    monkeypatch.setattr(REGISTRY["lora"], "save_final", keep)
    train(tiny_recipe(lora={"r": 4, "dropout": 0.0, "init": init, "calibration_batches": 2},
                      train={"max_steps": 3, "lr": 5e-2}, eval={"every": 0}), progress=False)
    final = tmp_path / "run" / "final"
    config = json.loads((final / "adapter_config.json").read_text())
    if init != "eva":  # PiSSA and CorDA changed the base: saved as (trained, -initial) at rank 2r, plain LoRA
        assert config["r"] == 8 and config["init_lora_weights"] is True

    expected = logits(trained["model"])  # (residual) base + trained adapter, as it left training
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), final)
    assert not [w for w in caught if "will be ignored" in str(w.message)]  # no spent init settings saved
    assert (expected - base_logits(tiny_model_dir)).abs().max() > 1e-2  # training moved it: the match means something
    assert torch.allclose(logits(fresh), expected, atol=1e-4)


# ---------------------------------------------------------------- EVA

def test_eva_sets_a_to_the_principal_directions_of_the_activations(tiny_recipe, tiny_model_dir):
    recipe = lora_recipe(tiny_recipe, "eva")
    calibration = calibration_for(recipe)
    base = load_base(str(tiny_model_dir))[0]
    inputs = []  # what layer 0's q_proj sees on the calibration tokens that carry labels (EVA's label mask)
    hook = base.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, args, out: inputs.append(args[0]))
    batches = calibration.task(recipe.lora.calibration_batches)
    with torch.no_grad():
        for batch in batches:
            base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    hook.remove()
    x = torch.cat([h[b["labels"] != -100] for h, b in zip(inputs, batches)])
    x = x - x.mean(0)

    plain = REGISTRY["lora"].from_recipe(lora_recipe(tiny_recipe, "default")).prepare(load_base(str(tiny_model_dir))[0])
    default_a = {name: a for name, (a, _) in adapters(plain).items()}
    model = REGISTRY["lora"].from_recipe(recipe).prepare(base, calibration)
    found = adapters(model)
    assert found
    for name, (a, b) in found.items():
        assert torch.equal(b, torch.zeros_like(b)), name  # B starts at zero: the function is unchanged
        # A's rows are principal components (orthonormal right singular vectors), unlike default init
        assert torch.allclose(a @ a.T, torch.eye(a.size(0)), atol=1e-4), name
        if name in default_a and default_a[name].shape == a.shape:
            assert not torch.allclose(default_a[name] @ default_a[name].T, torch.eye(a.size(0)), atol=1e-2)
    # and they span the directions of largest activation variance: as much of it as the exact top-k PCA
    a = found["base_model.model.model.layers.0.self_attn.q_proj"][0]
    captured = lambda rows: float((x @ rows.T).pow(2).sum() / x.pow(2).sum())
    best = captured(torch.linalg.svd(x, full_matrices=False).Vh[: a.size(0)])
    random_rows = torch.linalg.qr(torch.randn(x.size(1), a.size(0), generator=torch.Generator().manual_seed(0)))[0].T
    assert captured(a) > 0.97 * best
    assert captured(a) > 2 * captured(random_rows)
    assert torch.allclose(logits(model), base_logits(tiny_model_dir), atol=1e-6)


def test_data_driven_inits_need_calibration(tiny_recipe, tiny_model_dir):
    for init in ("eva", "corda_kpm", "corda_ipm"):
        with pytest.raises(UserError, match=f"lora.init: {init} needs calibration data"):
            REGISTRY["lora"].from_recipe(lora_recipe(tiny_recipe, init)).prepare(load_base(str(tiny_model_dir))[0])


# ---------------------------------------------------------------- CorDA

class Spy:
    """A Calibration that records which source (task or general text) was read."""

    def __init__(self, calibration):
        self.calibration, self.read = calibration, []

    def task(self, n):
        self.read.append("task")
        return self.calibration.task(n)

    def general(self, n):
        self.read.append("general")
        return self.calibration.general(n)


@pytest.fixture(scope="module")
def corda_models(tiny_dirs, tmp_path_factory):
    """{kpm, ipm}: (prepared tiny llama, the calibration sources it read); prepared once, they take seconds."""
    from tuna.config import validate_recipe

    root = tmp_path_factory.mktemp("corda")
    data = root / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"what is {i} + {i}?"},
                                                     {"role": "assistant", "content": f"{2 * i}"}]}) + "\n"
                            for i in range(40)))
    out = {}
    for method in ("kpm", "ipm"):
        recipe = validate_recipe({"model": str(tiny_dirs["llama"]), "data": {"path": str(data), "eval_split": 0.2},
                                  "lora": {"r": 4, "dropout": 0.0, "init": f"corda_{method}", "calibration_batches": 2},
                                  "train": {"micro_batch_size": 4, "device": "cpu", "precision": "fp32"},
                                  "output_dir": str(root / method)})
        spy = Spy(calibration_for(recipe))
        out[method] = REGISTRY["lora"].from_recipe(recipe).prepare(load_base(recipe.model.name)[0], spy), spy.read
    return out


@pytest.mark.parametrize("method", ["kpm", "ipm"])
def test_corda_keeps_the_function_at_init(corda_models, tiny_model_dir, method):
    model, _ = corda_models[method]
    found = adapters(model)
    assert len(found) == 14  # every linear layer of both blocks was prepared (all-linear)
    original = load_base(str(tiny_model_dir))[0].model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(base_weight(model), original, atol=1e-3)  # the adapted part left the base
    assert all(b.abs().max() > 0 for _, b in found.values())  # unlike plain LoRA, B is not zero
    assert torch.allclose(logits(model), base_logits(tiny_model_dir), atol=1e-4)


def test_corda_kpm_reads_general_text_and_ipm_the_task(corda_models):
    assert corda_models["kpm"][1] == ["general"]
    assert corda_models["ipm"][1] == ["task"]


def test_corda_kpm_and_ipm_choose_different_components(corda_models):
    kpm, ipm = adapters(corda_models["kpm"][0]), adapters(corda_models["ipm"][0])
    assert kpm.keys() == ipm.keys()
    for name in kpm:
        delta = lambda a_b: a_b[1] @ a_b[0]
        assert not torch.allclose(delta(kpm[name]), delta(ipm[name]), atol=1e-3), name
    # IPM adapts the principal components (largest singular values), KPM the least ones
    energy = lambda found: sum(float((b @ a).norm()) for a, b in found.values())
    assert energy(ipm) > energy(kpm)


def test_corda_calibration_runs_each_example_alone_without_padding():
    from tuna.methods.lora import run_forward

    seen = []
    model = lambda input_ids, attention_mask: seen.append((input_ids.tolist(), attention_mask.tolist()))
    batch = {"input_ids": torch.tensor([[4, 5, 6], [7, 8, 0]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    run_forward(model, [batch])
    assert seen == [([[4, 5, 6]], [[1, 1, 1]]), ([[7, 8]], [[1, 1]])]


# ---------------------------------------------------------------- rank check

def test_rank_above_the_smallest_targeted_layer_is_refused_before_training(tiny_recipe, tmp_path):
    # k_proj maps 32 -> 16 (2 key-value heads of 8): r = 17 cannot fit it
    with pytest.raises(UserError, match="lora.r is 17 but the smallest targeted layer has dimension 16"):
        train(tiny_recipe(lora={"r": 17}), progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_rank_check_only_looks_at_the_targeted_layers(tiny_recipe, tiny_model_dir):
    model = REGISTRY["lora"].from_recipe(tiny_recipe(lora={"r": 17, "target_modules": ["q_proj", "down_proj"]})).prepare(
        load_base(str(tiny_model_dir))[0])
    assert {tuple(a.shape) for a, _ in adapters(model).values()} == {(17, 32), (17, 64)}


def test_lora_on_the_embeddings_alone_has_no_linear_rank_to_check(tiny_recipe, tiny_dirs):
    recipe = tiny_recipe(model=str(tiny_dirs["qwen2"]), lora={"r": 4, "target_modules": ["embed_tokens"]})
    model = REGISTRY["lora"].from_recipe(recipe).prepare(load_base(str(tiny_dirs["qwen2"]))[0])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_embedding" in n for n in trainable)
