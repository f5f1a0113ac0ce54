"""`output: adapter`: LoRA adapters of one base combine into one PEFT adapter whose dense change equals
the combination computed by hand from the inputs' factors."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tests.merge.test_sources import lora_adapter
from tuna.merge.run import merge_models

MODULE = "base_model.model.model.layers.2.self_attn.q_proj"


def factors(adapter) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A, B, scale) of one module of a saved adapter."""
    tensors = load_file(adapter / "adapter_model.safetensors")
    config = json.loads((adapter / "adapter_config.json").read_text())
    return (tensors[f"{MODULE}.lora_A.weight"], tensors[f"{MODULE}.lora_B.weight"],
            config["lora_alpha"] / config["r"])


@pytest.fixture(scope="module")
def adapters(family, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return [lora_adapter(family["base"], root / f"a{seed}", seed=seed) for seed in (1, 2)]


def combined(adapters, tmp_path, method: str, weights=(0.5, 1.5), **parameters) -> torch.Tensor:
    out = merge_models({"merge_method": method, "output": "adapter", "parameters": parameters,
                        "models": [{"model": str(a), "parameters": {"weight": w}} for a, w in zip(adapters, weights)]},
                       tmp_path / method, progress=False)
    a, b, scale = factors(out)
    assert (out / "README.md").is_file() and (out / "tokenizer_config.json").is_file()
    return scale * b @ a


def test_cat_equals_the_weighted_sum_of_the_dense_changes(adapters, tmp_path):
    (a1, b1, s1), (a2, b2, s2) = factors(adapters[0]), factors(adapters[1])
    torch.testing.assert_close(combined(adapters, tmp_path, "cat"), 0.5 * s1 * b1 @ a1 + 1.5 * s2 * b2 @ a2)


def test_svd_at_full_rank_equals_the_weighted_sum(adapters, tmp_path):
    (a1, b1, s1), (a2, b2, s2) = factors(adapters[0]), factors(adapters[1])
    torch.testing.assert_close(combined(adapters, tmp_path, "svd", svd_rank=4),
                               0.5 * s1 * b1 @ a1 + 1.5 * s2 * b2 @ a2, atol=1e-5, rtol=1e-4)


def test_linear_combines_the_factors_as_peft_defines(adapters, tmp_path):
    (a1, b1, s1), (a2, b2, s2) = factors(adapters[0]), factors(adapters[1])
    r1, r2 = math.sqrt(0.5 * s1), math.sqrt(1.5 * s2)
    torch.testing.assert_close(combined(adapters, tmp_path, "linear"), (r1 * b1 + r2 * b2) @ (r1 * a1 + r2 * a2))


def test_ties_elects_signs_on_each_factor(adapters, tmp_path):
    (a1, b1, s1), (a2, b2, s2) = factors(adapters[0]), factors(adapters[1])

    def ties(x, y):  # weights 1: keep entries agreeing with the sign of the sum, average them
        stacked = torch.stack([x, y])
        agree = stacked.sign() == torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
        return (stacked * agree).sum(0) / agree.sum(0).clamp(min=1)

    r1, r2 = math.sqrt(s1), math.sqrt(s2)
    expected = ties(r1 * b1, r2 * b2) @ ties(r1 * a1, r2 * a2)
    torch.testing.assert_close(combined(adapters, tmp_path, "ties", weights=(1.0, 1.0), density=1.0), expected)


def test_adapters_of_different_bases_are_refused(adapters, family, tmp_path):
    from tuna.errors import UserError

    with pytest.raises(UserError, match="share one base"):
        merge_models({"merge_method": "cat", "output": "adapter", "base_model": str(family["ft1"]),
                      "models": [{"model": str(a)} for a in adapters]}, tmp_path / "out", progress=False)
    with pytest.raises(UserError, match="not a LoRA adapter"):
        merge_models({"merge_method": "cat", "output": "adapter", "models": [{"model": str(family["ft1"])}]},
                     tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
