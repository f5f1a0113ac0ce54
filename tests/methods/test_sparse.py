import pytest
import torch

from tuna.cli import main
from tuna.errors import UserError
from tuna.methods.sparse import candidate_linears, choose_indices, gradient_scores
from tuna.models.load import load_any, load_base
from tuna.models.sparse_delta import read_delta
from tuna.train.loop import train

SPARSE = {"density": 0.05, "calibration_batches": 2}


def dense(delta_spec, base) -> dict[str, torch.Tensor]:
    """The delta as full tensors shaped like the base weights."""
    delta, _ = read_delta(delta_spec)
    params = dict(base.named_parameters())
    out = {}
    for name, (indices, values) in delta.items():
        full = torch.zeros(params[name].numel())
        full.index_add_(0, indices, values)
        out[name] = full.view_as(params[name])
    return out


def test_only_the_chosen_entries_change(tiny_recipe, tiny_model_dir, tmp_path):
    result = train(tiny_recipe(method="sparse", sparse=SPARSE, train={"max_steps": 4, "lr": 1e-2}), progress=False)
    base = dict(load_base(str(tiny_model_dir))[0].named_parameters())
    tuned = dict(load_any(str(tmp_path / "run"))[0].named_parameters())
    delta, shapes = read_delta(tmp_path / "run")
    linears = [name for name in base if ".layers." in name and name.endswith("proj.weight")]
    assert sorted(delta) == sorted(linears)  # every linear weight of the blocks takes part
    assert result.trainable_params == sum(round(0.05 * base[n].numel()) for n in linears)
    for name, p in base.items():
        changed = (tuned[name] != p).reshape(-1).nonzero().squeeze(1)
        if name in delta:
            chosen = delta[name][0]
            assert set(changed.tolist()) <= set(chosen.tolist())  # nothing outside the subset moved
            assert len(changed) >= 0.9 * len(chosen)  # and the subset did train
            assert shapes[name] == list(p.shape)
        else:
            assert len(changed) == 0, name  # embeddings, norms: bit-identical


def test_the_subset_is_the_largest_gradients_of_each_tensor(tiny_model_dir, tiny_recipe):
    model, _ = load_base(str(tiny_model_dir))
    batch = {"input_ids": torch.randint(3, 60, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    batch["labels"] = batch["input_ids"].clone()
    linears = candidate_linears(model)
    scores = gradient_scores(model, linears, [batch])
    chosen = choose_indices(scores, 0.1)
    for name, score in scores.items():
        flat = score.reshape(-1)
        inside = torch.zeros_like(flat, dtype=torch.bool)
        inside[chosen[name]] = True
        assert inside.sum() == round(0.1 * flat.numel())
        assert flat[inside].min() >= flat[~inside].max()
    assert not any(p.requires_grad or p.grad is not None for p in model.parameters())  # calibration leaves no trace


def test_deltas_of_two_runs_compose_by_addition(tiny_recipe, tiny_model_dir, tmp_path, capsys):
    for name, seed in (("a", 0), ("b", 1)):
        train(tiny_recipe(method="sparse", sparse=SPARSE, output_dir=str(tmp_path / name),
                          train={"max_steps": 3, "lr": 1e-2, "seed": seed}), progress=False)
    assert main(["export", str(tiny_model_dir), "--apply-delta", str(tmp_path / "a"), str(tmp_path / "b" / "final"),
                 "--merge", str(tmp_path / "ab")]) == 0
    base = load_base(str(tiny_model_dir))[0]
    composed = dict(load_base(str(tmp_path / "ab"))[0].named_parameters())
    delta_a, delta_b = dense(tmp_path / "a", base), dense(tmp_path / "b", base)
    assert any(not torch.equal(delta_a[n] != 0, delta_b[n] != 0) for n in delta_a)  # two different subsets
    for name, p in base.named_parameters():
        expected = p + delta_a.get(name, 0) + delta_b.get(name, 0)
        torch.testing.assert_close(composed[name], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("density", [0, 1.5, -0.1])
def test_density_out_of_range_fails_before_any_compute(tiny_recipe, density):
    with pytest.raises(UserError, match="sparse.density"):
        tiny_recipe(method="sparse", sparse={"density": density})


def test_apply_delta_refuses_what_is_not_a_delta(tiny_model_dir, tmp_path, capsys):
    assert main(["export", str(tiny_model_dir), "--apply-delta", str(tmp_path), "--merge", str(tmp_path / "o")]) == 2
    assert "is not a sparse delta" in capsys.readouterr().err
