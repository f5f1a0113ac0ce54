"""The defining mechanisms of LiNeS, Model Stock and DARE, checked against their papers' formulas."""
from __future__ import annotations

import math

import pytest
import torch

from tests.merge.test_against_mergekit import tensors_of
from tuna.merge import rules
from tuna.merge.run import merge_models


def depth_of(key: str, layers: int = 4) -> float:
    """The test's own reading of LiNeS' (ℓ−1)/(L−1): blocks by index, embeddings first, the rest last."""
    parts = key.split(".")
    if "layers" in parts:
        return int(parts[parts.index("layers") + 1]) / (layers - 1)
    return 0.0 if "embed" in key else 1.0


def test_lines_scales_each_layer_of_the_task_vector_by_its_depth(family, tmp_path):
    alpha, beta = 0.2, 0.6
    out = merge_models({"merge_method": "lines", "base_model": str(family["base"]),
                        "parameters": {"alpha": alpha, "beta": beta}, "models": [{"model": str(family["ft1"])}]},
                       tmp_path / "lines", progress=False)
    merged, base, tuned = tensors_of(out), tensors_of(family["base"]), tensors_of(family["ft1"])
    scales = set()
    for key in merged:
        scale = alpha + beta * depth_of(key)
        scales.add(round(scale, 6))
        torch.testing.assert_close(merged[key] - base[key], scale * (tuned[key] - base[key]), atol=1e-6, rtol=1e-5)
    assert scales == {0.2, 0.4, 0.6, 0.8}  # four blocks: α, α+β/3, α+2β/3, α+β


def test_lines_applies_to_the_merged_task_vector_of_another_method(family, tmp_path):
    config = {"merge_method": "ties", "base_model": str(family["base"]), "parameters": {"density": 0.5},
              "models": [{"model": str(family["ft1"])}, {"model": str(family["ft2"])}]}
    plain = tensors_of(merge_models(config, tmp_path / "ties", progress=False))
    scaled = tensors_of(merge_models({**config, "lines": {"alpha": 0.1, "beta": 0.9}}, tmp_path / "ties_lines",
                                     progress=False))
    base = tensors_of(family["base"])
    for key in plain:
        expected = base[key] + (0.1 + 0.9 * depth_of(key)) * (plain[key] - base[key])
        torch.testing.assert_close(scaled[key], expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("angle_degrees", [30.0, 60.0, 85.0])
def test_model_stock_interpolates_by_the_papers_ratio_for_a_known_angle(angle_degrees):
    theta = math.radians(angle_degrees)
    base = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    e1, e2 = torch.zeros(8, 8), torch.zeros(8, 8)
    e1[0, 0], e2[3, 5] = 1.0, 1.0
    first = base + 2.0 * e1
    second = base + 2.0 * (math.cos(theta) * e1 + math.sin(theta) * e2)
    merged = rules.model_stock(base, [first, second], [{}, {}], {"filter_wise": False}, None)
    t = 2 * math.cos(theta) / (1 + math.cos(theta))  # k·cosθ / (1 + (k−1)·cosθ), k = 2
    torch.testing.assert_close(merged, t * (first + second) / 2 + (1 - t) * base, atol=1e-6, rtol=1e-6)


def test_dare_drops_one_minus_density_and_rescales_the_rest():
    delta = torch.rand(400_000) + 0.5
    kept = rules.random_drop(delta, 0.5, torch.Generator().manual_seed(3))
    survivors = kept != 0
    assert abs(survivors.float().mean().item() - 0.5) < 0.005
    torch.testing.assert_close(kept[survivors], delta[survivors] / 0.5)
    assert abs(kept.mean().item() / delta.mean().item() - 1) < 0.01  # unbiased: E[kept] = delta


def test_dare_merge_is_seeded_and_drops_independently_per_tensor(family, tmp_path):
    def dare(name: str, seed: int) -> dict:
        return tensors_of(merge_models({"merge_method": "dare_linear", "base_model": str(family["base"]), "seed": seed,
                                        "models": [{"model": str(family["ft1"]), "parameters": {"density": 0.5}}]},
                                       tmp_path / name, progress=False))

    base, tuned = tensors_of(family["base"]), tensors_of(family["ft1"])
    first, again, other = dare("a", 7), dare("b", 7), dare("c", 8)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    key = "model.embed_tokens.weight"
    moved, task = first[key] - base[key], tuned[key] - base[key]
    survivors = moved.abs() > 1e-7
    assert abs(survivors.float().mean().item() - 0.5) < 0.02
    torch.testing.assert_close(moved[survivors], 2 * task[survivors], atol=1e-5, rtol=1e-4)


def test_ties_keeps_only_the_entries_that_agree_with_the_elected_sign():
    base = torch.zeros(4)
    a, b = torch.tensor([1.0, -2.0, 3.0, 0.1]), torch.tensor([-3.0, -1.0, 1.0, 0.2])
    merged = rules.RULES["ties"].merge(base, [a, b], [{"weight": 1.0, "density": 1.0}] * 2,
                                       {"normalize": True, "lambda": 1.0}, None)
    # signs: sum -2 → −: only b's −3; sum −3 → −: mean(−2, −1); sum 4 → +: mean(3, 1); +: mean(0.1, 0.2)
    torch.testing.assert_close(merged, torch.tensor([-3.0, -1.5, 2.0, 0.15]))
    trimmed = rules.magnitude_trim(torch.tensor([0.1, -5.0, 2.0, -0.3]), 0.5, None)
    assert trimmed.tolist() == [0.0, -5.0, 2.0, -0.0]
