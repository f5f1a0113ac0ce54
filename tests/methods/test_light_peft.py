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
