import math
import re

import pytest
import torch
from torch import nn

from tuna.methods import REGISTRY
from tuna.models.load import load_base
from tuna.train.optim import build_optimizer, clip_gradients

LR = 1e-3


def group_lr(optimizer) -> dict[int, float]:
    """id(parameter) -> the learning rate of the one group that holds it."""
    lrs: dict[int, float] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert id(p) not in lrs, "a parameter sits in two groups"
            lrs[id(p)] = group["lr"]
    return lrs


def prepared(tiny_recipe, directory, method, **sections):
    recipe = tiny_recipe(model=str(directory), method=method, **sections)
    instance = REGISTRY[method].from_recipe(recipe)
    model = instance.prepare(load_base(str(directory))[0])
    return model, recipe, build_optimizer(model, recipe, instance, LR)


def depth_from_name(name: str, layers: int) -> int:
    """Counted here from the parameter's name alone: top block 1, ..., bottom block L, embeddings L+1, else 0."""
    block = re.search(r"\.layers\.(\d+)\.", name)
    if block:
        return layers - int(block.group(1))
    if "embed_tokens" in name:
        return layers + 1
    assert re.search(r"(^|\.)(norm\.weight|lm_head\.weight)$", name), name
    return 0


@pytest.mark.parametrize("kind", ["llama", "qwen2"])  # llama ties the head to the embeddings, qwen2 does not
def test_layer_decay_gives_each_parameter_lr_times_decay_to_its_depth(tiny_recipe, tiny_dirs, kind):
    model, _, optimizer = prepared(tiny_recipe, tiny_dirs[kind], "full", optim={"layer_decay": 0.5})
    layers = model.config.num_hidden_layers
    lrs = group_lr(optimizer)
    named = dict(model.named_parameters())
    assert set(lrs) == {id(p) for p in named.values()}  # every parameter, once
    for name, p in named.items():
        assert lrs[id(p)] == pytest.approx(LR * 0.5 ** depth_from_name(name, layers)), name
    if kind == "qwen2":  # the untied head and the final norm keep the full rate
        assert lrs[id(named["lm_head.weight"])] == lrs[id(named["model.norm.weight"])] == pytest.approx(LR)
    # one group per distinct depth: head/norm, each block, embeddings; each knows its multiplier
    assert len(optimizer.param_groups) == layers + 2
    assert all(g["lr"] == pytest.approx(LR * g["lr_scale"]) for g in optimizer.param_groups)


def test_without_layer_decay_there_is_one_group_at_lr(tiny_recipe, tiny_model_dir):
    model, recipe, optimizer = prepared(tiny_recipe, tiny_model_dir, "full")
    assert recipe.optim.layer_decay is None
    assert len(optimizer.param_groups) == 1
    assert optimizer.param_groups[0]["lr"] == LR
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == {id(p) for p in model.parameters()}


def test_lora_plus_gives_b_ratio_times_the_rate_of_a(tiny_recipe, tiny_model_dir):
    model, _, optimizer = prepared(tiny_recipe, tiny_model_dir, "lora", lora={"r": 4, "plus_ratio": 16})
    lrs = group_lr(optimizer)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(lrs) == {id(p) for p in trainable.values()}  # frozen base weights are not in the optimizer
    a = [n for n in trainable if ".lora_A." in n]
    b = [n for n in trainable if ".lora_B." in n]
    assert len(a) == len(b) == 14 and len(a) + len(b) == len(trainable)
    assert all(lrs[id(trainable[n])] == pytest.approx(LR) for n in a)
    assert all(lrs[id(trainable[n])] == pytest.approx(16 * LR) for n in b)


def test_lora_plus_without_ratio_keeps_a_and_b_at_lr(tiny_recipe, tiny_model_dir):
    _, _, optimizer = prepared(tiny_recipe, tiny_model_dir, "lora", lora={"r": 4})
    assert [g["lr"] for g in optimizer.param_groups] == [LR]


def test_lora_plus_and_layer_decay_multiply(tiny_recipe, tiny_model_dir):
    model, _, optimizer = prepared(tiny_recipe, tiny_model_dir, "lora", lora={"r": 4, "plus_ratio": 16},
                                   optim={"layer_decay": 0.5})
    lrs = group_lr(optimizer)
    params = dict(model.named_parameters())
    b_low = next(n for n in params if ".layers.0." in n and "q_proj.lora_B" in n)  # depth 2 of 2
    a_top = next(n for n in params if ".layers.1." in n and "q_proj.lora_A" in n)  # depth 1
    assert lrs[id(params[b_low])] == pytest.approx(LR * 16 * 0.5**2)
    assert lrs[id(params[a_top])] == pytest.approx(LR * 0.5)


def test_lora_plus_adapters_on_embeddings_train_at_the_base_rate(tiny_recipe, tiny_dirs):
    # PEFT's LoRA+ gives embedding adapters an absolute lr (1e-6 by default), not a multiple of lr.
    model, _, optimizer = prepared(tiny_recipe, tiny_dirs["qwen2"], "lora",
                                   lora={"r": 4, "plus_ratio": 16, "target_modules": ["q_proj", "embed_tokens"]})
    lrs = group_lr(optimizer)
    embedding = {n: p for n, p in model.named_parameters() if "lora_embedding" in n}
    assert len(embedding) == 2
    assert all(lrs[id(p)] == pytest.approx(LR) for p in embedding.values())


class TwoParts(nn.Module):
    def __init__(self):
        super().__init__()
        self.big = nn.Linear(4, 4)
        self.small = nn.Linear(4, 4)


def with_gradients() -> tuple[TwoParts, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    net = TwoParts()
    for name, p in net.named_parameters():
        p.grad = torch.randn_like(p) * (100.0 if name.startswith("big") else 0.01)
    return net, {n: p.grad.clone() for n, p in net.named_parameters()}


def norm(tensors) -> float:
    return math.sqrt(sum(float(t.pow(2).sum()) for t in tensors))


@pytest.mark.parametrize("per_component", [True, False])
def test_clip_returns_the_global_norm_before_clipping(per_component):
    net, grads = with_gradients()
    assert clip_gradients(net, 1.0, per_component) == pytest.approx(norm(grads.values()), rel=1e-5)


def test_per_component_clipping_leaves_small_components_alone():
    net, grads = with_gradients()
    small = norm([grads["small.weight"], grads["small.bias"]])
    big = norm([grads["big.weight"], grads["big.bias"]])
    assert small < 1.0 < big
    clip_gradients(net, 1.0, per_component=True)
    assert torch.equal(net.small.weight.grad, grads["small.weight"])
    assert torch.equal(net.small.bias.grad, grads["small.bias"])
    # a module's weight and bias are one component, clipped together to max_norm
    assert norm([net.big.weight.grad, net.big.bias.grad]) == pytest.approx(1.0, rel=1e-4)
    factor = net.big.weight.grad / grads["big.weight"]
    assert torch.allclose(factor, torch.full_like(factor, 1.0 / big), rtol=1e-4)
    assert torch.allclose(net.big.bias.grad, grads["big.bias"] / big, rtol=1e-4)


def test_global_clipping_scales_every_component_alike():
    net, grads = with_gradients()
    total = norm(grads.values())
    clip_gradients(net, 1.0, per_component=False)
    for name, p in net.named_parameters():
        assert torch.allclose(p.grad, grads[name] / total, rtol=1e-4), name
    assert norm(p.grad for p in net.parameters()) == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("per_component", [True, False])
def test_no_max_norm_measures_without_clipping(per_component):
    net, grads = with_gradients()
    assert clip_gradients(net, None, per_component) == pytest.approx(norm(grads.values()), rel=1e-5)
    assert all(torch.equal(p.grad, grads[n]) for n, p in net.named_parameters())


def test_parameters_without_gradients_are_skipped():
    net, grads = with_gradients()
    net.small.weight.grad = None
    net.small.bias.grad = None
    expected = norm([grads["big.weight"], grads["big.bias"]])
    assert clip_gradients(net, 1.0, per_component=True) == pytest.approx(expected, rel=1e-5)
    assert net.small.weight.grad is None


def test_train_lr_logs_the_base_rate_under_layer_decay(tiny_recipe, tmp_path):
    """Every group's rate is the base rate times its multiplier; the log shows the base rate, whatever group
    comes first (with decay 0.5 the first group, the embeddings', runs at lr x 0.5^3)."""
    from tuna.rundir import read_metrics
    from tuna.train.loop import train

    recipe = tiny_recipe(method="full", optim={"layer_decay": 0.5}, eval={"every": 0},
                         train={"max_steps": 3, "lr": LR, "schedule": "linear", "warmup_ratio": 0.0})
    result = train(recipe, progress=False)
    logged = [r["train/lr"] for r in read_metrics(f"{result.run_dir}/metrics.jsonl")]
    assert logged == pytest.approx([LR, LR * 2 / 3, LR / 3], rel=1e-6)  # linear decay to 0 over 3 steps
