import json

import torch

from tuna.data.render import IGNORE
from tuna.models.load import load_base
from tuna.models.forward import token_losses
from tuna.models.layers import decoder_layers
from tuna.train.compile import compile_blocks
from tuna.train.loop import train


def loss_and_grads(model, batch):
    model.zero_grad()
    losses, mask = token_losses(model, batch)
    (losses.sum() / mask.sum()).backward()
    return losses.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_compiled_blocks_give_the_eager_loss_and_gradients(tiny_model_dir):
    model, tokenizer = load_base(str(tiny_model_dir))
    input_ids = torch.randint(3, len(tokenizer), (2, 13), generator=torch.Generator().manual_seed(0))
    labels = input_ids.clone()
    labels[:, :4] = IGNORE
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": torch.ones_like(input_ids)}
    eager_losses, eager_grads = loss_and_grads(model, batch)
    assert compile_blocks(model) == 2
    assert all(block._compiled_call_impl is not None for block in decoder_layers(model))
    losses, grads = loss_and_grads(model, batch)
    torch.testing.assert_close(losses, eager_losses, atol=1e-5, rtol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_train_compile_compiles_the_blocks_of_the_trained_model(tiny_recipe, tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr("tuna.train.loop.compile_blocks", lambda model: compiled.append(model) or compile_blocks(model))
    first = {}
    for name, flag in (("eager", False), ("compiled", True)):
        result = train(tiny_recipe(train={"max_steps": 1, "compile": flag}, eval={"every": 0},
                                   output_dir=str(tmp_path / name)), progress=False)
        first[name] = json.loads(open(f"{result.run_dir}/metrics.jsonl").readline())["train/loss"]
    assert len(compiled) == 1 and hasattr(compiled[0], "peft_config")  # the LoRA model, adapters inside
    assert abs(first["compiled"] - first["eager"]) < 1e-5
