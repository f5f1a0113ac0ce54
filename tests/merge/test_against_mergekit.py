"""mergekit as the oracle: on tiny Llama checkpoints, `tuna merge` and mergekit write the same tensors.

DARE draws its drops from each tool's own generator, so at density < 1 only the statistics can agree
(test_rules.py); at density 1 nothing is dropped and the two must agree exactly.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tuna.merge.run import merge_models

pytest.importorskip("mergekit")


def mergekit_merge(config: dict, out) -> dict:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    run_merge(MergeConfiguration.model_validate(config), str(out),
              MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
    return tensors_of(out)


def tensors_of(directory) -> dict:
    found = {}
    for f in sorted(directory.glob("*.safetensors")):
        found.update(load_file(f))
    return found


def configs(f) -> dict[str, dict]:
    two = [{"model": str(f["ft1"]), "parameters": {"weight": 0.7, "density": 0.5}},
           {"model": str(f["ft2"]), "parameters": {"weight": 0.4, "density": 0.6}}]
    return {
        "linear": {"merge_method": "linear", "models": [{"model": str(f[k]), "parameters": {"weight": w}}
                                                         for k, w in [("ft1", 1.0), ("ft2", 2.0), ("ft3", 0.5)]]},
        "linear_with_base": {"merge_method": "linear", "base_model": str(f["base"]),
                             "models": [{"model": str(f["base"]), "parameters": {"weight": 1.0}},
                                        {"model": str(f["ft1"]), "parameters": {"weight": 3.0}}]},
        "linear_unnormalised": {"merge_method": "linear", "parameters": {"normalize": False},
                                "models": [{"model": str(f["ft1"]), "parameters": {"weight": 0.3}},
                                           {"model": str(f["ft2"]), "parameters": {"weight": 0.3}}]},
        "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": str(f["base"]),
                            "parameters": {"lambda": 0.8},
                            "models": [{"model": m["model"], "parameters": {"weight": m["parameters"]["weight"]}}
                                       for m in two]},
        "ties": {"merge_method": "ties", "base_model": str(f["base"]), "models": two},
        "ties_gradient": {"merge_method": "ties", "base_model": str(f["base"]),
                          "parameters": {"density": [0.2, 0.9], "weight": [{"filter": "mlp", "value": 0.3},
                                                                           {"value": 1.0}]},
                          "models": [{"model": str(f["ft1"])}, {"model": str(f["ft2"])}, {"model": str(f["ft3"])}]},
        "dare_ties_density_1": {"merge_method": "dare_ties", "base_model": str(f["base"]),
                                "models": [{"model": m["model"], "parameters": {"weight": m["parameters"]["weight"],
                                                                                "density": 1.0}} for m in two]},
        "dare_linear_density_1": {"merge_method": "dare_linear", "base_model": str(f["base"]),
                                  "models": [{"model": m["model"], "parameters": {"weight": 0.5, "density": 1.0}}
                                             for m in two]},
        "slerp": {"merge_method": "slerp", "base_model": str(f["base"]), "parameters": {"t": 0.3},
                  "models": [{"model": str(f["base"])}, {"model": str(f["ft1"])}]},
        "slerp_gradient": {"merge_method": "slerp", "base_model": str(f["ft1"]),
                           "parameters": {"t": [{"filter": "self_attn", "value": [0.0, 0.5, 1.0]},
                                                {"value": 0.6}]},
                           "models": [{"model": str(f["ft1"])}, {"model": str(f["ft2"])}]},
        "model_stock": {"merge_method": "model_stock", "base_model": str(f["base"]),
                        "models": [{"model": str(f[k])} for k in ("ft1", "ft2", "ft3")]},
        "model_stock_filter_wise": {"merge_method": "model_stock", "base_model": str(f["base"]),
                                    "parameters": {"filter_wise": True},
                                    "models": [{"model": str(f[k])} for k in ("ft1", "ft2")]},
    }


CASES = ["linear", "linear_with_base", "linear_unnormalised", "task_arithmetic", "ties", "ties_gradient", "dare_ties_density_1",
         "dare_linear_density_1", "slerp", "slerp_gradient", "model_stock", "model_stock_filter_wise"]


@pytest.mark.parametrize("case", CASES)
def test_tuna_and_mergekit_write_the_same_tensors(case, family, tmp_path):
    config = configs(family)[case]
    theirs = mergekit_merge(config, tmp_path / "mergekit")
    ours = tensors_of(merge_models(config, tmp_path / "tuna", progress=False))
    assert ours.keys() == theirs.keys()
    base = tensors_of(family["base"])
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-5, rtol=0, msg=f"{case}: {key}")
        if case != "linear_unnormalised":  # the merge moved away from every input, so agreement is not by identity
            assert not torch.equal(ours[key], base[key])
