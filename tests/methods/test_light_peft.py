"""The light PEFT methods: LoRA-FA (A frozen), (IA)^3 and prompt tuning, each through PEFT."""
from __future__ import annotations

import pytest
import torch

from tuna.methods import REGISTRY
from tuna.methods.lora import Lora, LoraKnobs
from tuna.models.forward import model_logits, token_losses
from tuna.models.load import load_any, load_base
from tuna.train.loop import train


def batch_of(tokenizer, n=2, length=10):
    ids = torch.randint(3, len(tokenizer), (n, length), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def adam_steps(model, batch, steps=3, lr=1e-2):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        losses, mask = token_losses(model, batch)
        (losses.sum() / mask.sum()).backward()
        optimizer.step()
        optimizer.zero_grad()


def test_lora_fa_trains_b_only_and_leaves_a_as_initialised(tiny_model_dir):
    model, tokenizer = load_base(str(tiny_model_dir))
    model = Lora(lora=LoraKnobs(r=4, dropout=0.0, freeze_a=True)).prepare(model)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(".lora_B." in n for n in trained)
    a = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_A." in n}
    b = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_B." in n}
    adam_steps(model, batch_of(tokenizer))
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], t) for n, t in a.items())  # A bit-identical
    assert any(not torch.equal(params[n], t) for n, t in b.items())  # B trained


def test_lora_fa_needs_a_random_a(tiny_recipe):
    from tuna.errors import UserError

    with pytest.raises(UserError, match="freeze_a .* pissa is not random"):
        tiny_recipe(lora={"freeze_a": True, "init": "pissa"})


def test_ia3_rescales_keys_values_and_ffn_inputs_from_an_identity_start(tiny_model_dir, tmp_path):
    from peft import PeftModel

    base, tokenizer = load_base(str(tiny_model_dir))
    batch = batch_of(tokenizer)
    before = model_logits(base, batch).detach()
    model = REGISTRY["ia3"]().prepare(base)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert {n.split(".")[-3] for n in trained} == {"k_proj", "v_proj", "down_proj"}
    assert all(torch.equal(p, torch.ones_like(p)) for p in trained.values())  # the identity
    torch.testing.assert_close(model_logits(model, batch), before)  # so the model starts unchanged
    adam_steps(model, batch)
    after = model_logits(model, batch).detach()
    assert not torch.allclose(after, before)
    model.save_pretrained(tmp_path / "ia3")
    reloaded = PeftModel.from_pretrained(load_base(str(tiny_model_dir))[0], tmp_path / "ia3")
    torch.testing.assert_close(model_logits(reloaded, batch), after)  # a standard PEFT adapter


def test_prompt_tuning_trains_only_the_virtual_tokens_and_aligns_logits_with_the_input(tiny_recipe, tiny_model_dir,
                                                                                       tmp_path):
    base, tokenizer = load_base(str(tiny_model_dir))
    batch = batch_of(tokenizer)
    method = REGISTRY["prompt_tuning"].from_recipe(tiny_recipe(method="prompt_tuning",
                                                               prompt_tuning={"virtual_tokens": 4}))
    model = method.prepare(base)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained == ["prompt_encoder.default.embedding.weight"]
    logits = model_logits(model, batch)
    assert logits.shape[:2] == batch["input_ids"].shape  # the virtual positions are dropped
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(logits, full[:, 4:])  # and the input's positions are the last ones

    result = train(tiny_recipe(method="prompt_tuning", prompt_tuning={"virtual_tokens": 4},
                               train={"max_steps": 3, "lr": 0.1}), progress=False)
    tuned, _ = load_any(result.run_dir)
    untouched = dict(load_base(str(tiny_model_dir))[0].named_parameters())
    for name, p in tuned.get_base_model().named_parameters():
        assert torch.equal(p, untouched[name]), name  # the model itself is bit-identical
    assert not torch.allclose(model_logits(tuned, batch), model_logits(load_base(str(tiny_model_dir))[0], batch))


def test_prompt_tuning_refuses_what_runs_the_decoder_without_its_tokens(tiny_recipe):
    from tuna.errors import UserError

    with pytest.raises(UserError, match="cannot keep packed examples apart"):
        tiny_recipe(method="prompt_tuning", data={"batching": "packed"})
    with pytest.raises(UserError, match="loss_chunk_tokens runs the decoder and the head apart"):
        tiny_recipe(method="prompt_tuning", train={"loss_chunk_tokens": 8})


def test_prefix_tuning_trains_only_its_prefixes_and_generates_what_its_forward_pass_predicts(tiny_model_dir,
                                                                                               tiny_recipe):
    from tuna.models.generate import generate_ids, nucleus_sample

    base, tokenizer = load_base(str(tiny_model_dir))
    untouched = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = REGISTRY["prefix"].from_recipe(tiny_recipe(method="prefix", prefix={"virtual_tokens": 3})).prepare(base)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt_encoder.default.embedding.weight"]
    batch = batch_of(tokenizer)
    adam_steps(model, batch, lr=0.5)
    prompt = [5, 6, 7, 8]
    out = generate_ids(model, [prompt], pad_id=0, eos_id=-1, max_new_tokens=5)[0]
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for token in out:  # each generated token is the argmax of a full forward pass with the prefix
            assert token == int(model_logits(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})[0, -1]
                                .argmax())
            ids = torch.cat([ids, torch.tensor([[token]])], 1)
    with model.disable_adapter():
        plain = generate_ids(model, [prompt], pad_id=0, eos_id=-1, max_new_tokens=5)[0]
    assert plain != out  # the prefix is used when generating (transformers 5's generate would drop it)
    for name, p in model.get_base_model().named_parameters():
        assert torch.equal(p, untouched[name]), name
    logits = torch.tensor([0.1, 3.0, 0.2, 2.9])
    assert all(int(nucleus_sample(logits, 1e-6)) == 1 for _ in range(20))  # top_p ~ 0 keeps the argmax only


def test_a_prefix_run_trains_saves_and_generates(tiny_recipe, tmp_path):
    from tuna.cli import main

    result = train(tiny_recipe(method="prefix", prefix={"virtual_tokens": 3}, train={"max_steps": 2, "lr": 0.05}),
                   progress=False)
    assert main(["generate", "--model", result.run_dir, "--prompt", "hello", "--max-new-tokens", "3"]) == 0
