import json

import pytest
import torch

from tuna.methods import REGISTRY as METHODS
from tuna.models.load import load_base
from tuna.objectives import reference
from tuna.objectives.reference import reference_logits
from tuna.train.loop import train

IDS = {"input_ids": torch.tensor([[5, 6, 7, 8, 9, 10]]), "attention_mask": torch.ones(1, 6, dtype=torch.long)}


def test_disabled_adapter_reference_is_the_untouched_base(tiny_model_dir, tiny_recipe):
    recipe = tiny_recipe(method="lora", lora={"r": 4, "dropout": 0.0})
    assert METHODS["lora"].from_recipe(recipe).adapter_off_is_base()
    model = METHODS["lora"].from_recipe(recipe).prepare(load_base(str(tiny_model_dir))[0]).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)  # a trained adapter
        base = load_base(str(tiny_model_dir))[0].eval()(**IDS).logits
        torch.testing.assert_close(reference_logits(model)(IDS), base)
        assert not torch.allclose(model(**IDS).logits, base, atol=1e-3)
    assert not METHODS["lora"].from_recipe(tiny_recipe(method="lora", lora={"init": "pissa"})).adapter_off_is_base()
    assert not METHODS["full"]().adapter_off_is_base()


@pytest.mark.parametrize("method, copies", [("lora", 0), ("full", 1)])
def test_anchored_training_copies_the_model_only_without_an_adapter(tiny_recipe, monkeypatch, method, copies):
    made = []
    real_copy = reference.frozen_copy
    monkeypatch.setattr("tuna.train.loop.frozen_copy", lambda model: made.append(1) or real_copy(model))
    recipe = tiny_recipe(method=method, objective="anchored_sft", anchored_sft={"kl_beta": 0.1},
                         train={"max_steps": 3, "lr": 1e-2}, eval={"every": 0})
    result = train(recipe, progress=False)
    assert len(made) == copies
    rows = [json.loads(line) for line in open(f"{result.run_dir}/metrics.jsonl")]
    assert rows[0]["train/kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: policy == reference
    assert rows[-1]["train/kl"] > 1e-6 and all(r["train/nll"] > 0 for r in rows)
