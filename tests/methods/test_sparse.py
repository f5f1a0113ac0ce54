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


def spiel_step(model, batch, lr=0.05):
    from tuna.methods.sparse import parametrized

    model(**batch).loss.backward()
    with torch.no_grad():
        for p in parametrized(model).values():
            p.delta -= lr * p.delta.grad.sign()  # every active delta moves, by different amounts across steps
            p.delta.grad = None


def test_spiels_cycle_prunes_the_least_moved_regrows_by_gradient_and_keeps_the_density(tiny_model_dir):
    from tuna.data.calibration import Calibration
    from tuna.methods.sparse import Sparse, SparseKnobs, parametrized

    model, _ = load_base(str(tiny_model_dir))
    pretrained = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = torch.randint(3, 60, (2, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    method = Sparse(sparse=SparseKnobs(density=0.05, calibration_batches=1, regrow_every=2, regrow_fraction=0.25))
    model = method.prepare(model, Calibration(task=lambda n: [batch] * n, general=None))
    deltas = parametrized(model)
    first = {name: p.indices.clone() for name, p in deltas.items()}
    for step in range(2):
        assert method.on_step_start(model, step, 10) is False  # no update inside the cycle
        spiel_step(model, batch)
    before = {name: (p.indices.clone(), p.delta.detach().clone(), p.accumulated.clone()) for name, p in deltas.items()}
    assert method.on_step_start(model, 2, 10) is True  # the update: the loop restarts the moments
    modules = dict(model.named_modules())
    for name, p in deltas.items():
        indices, delta, accumulated = before[name]
        count = round(0.25 * len(indices))
        assert len(p.indices) == len(indices) and len(set(p.indices.tolist())) == len(indices)  # density kept
        dropped_slots = torch.topk(delta.abs(), count, largest=False).indices
        dropped = set(indices[dropped_slots].tolist())
        grown = set(p.indices.tolist()) - set(indices.tolist())
        assert len(grown) == count and not grown & set(indices.tolist())  # as many new entries as dropped
        score = accumulated.reshape(-1).abs().clone()
        score[indices] = -1
        assert grown == set(torch.topk(score, count).indices.tolist())  # the largest accumulated gradients
        weight = modules[name].weight.detach().reshape(-1)
        original = pretrained[f"{name}.weight"].reshape(-1)
        dropped_now = torch.tensor(sorted(dropped))
        assert torch.equal(weight[dropped_now], original[dropped_now])  # back to exactly the pretrained value
        grown_now = torch.tensor(sorted(grown))
        assert torch.equal(weight[grown_now], original[grown_now])  # new entries start at delta 0
        kept = [slot for slot in range(len(indices)) if slot not in set(dropped_slots.tolist())]
        assert torch.equal(p.delta.detach()[kept], delta[kept])  # the rest keep their deltas
        assert p.accumulated.abs().sum() == 0  # a new cycle accumulates afresh
    assert any(not torch.equal(first[n], p.indices) for n, p in deltas.items())


def test_static_sparse_keeps_its_indices(tiny_model_dir):
    from tuna.data.calibration import Calibration
    from tuna.methods.sparse import Sparse, SparseKnobs, parametrized

    model, _ = load_base(str(tiny_model_dir))
    ids = torch.randint(3, 60, (2, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    method = Sparse(sparse=SparseKnobs(density=0.05, calibration_batches=1, regrow=False, regrow_every=1))
    model = method.prepare(model, Calibration(task=lambda n: [batch] * n, general=None))
    first = {name: p.indices.clone() for name, p in parametrized(model).items()}
    for step in range(3):
        assert method.on_step_start(model, step, 10) is False
        spiel_step(model, batch)
    assert all(torch.equal(first[n], p.indices) and p.accumulated is None for n, p in parametrized(model).items())


def test_regrown_deltas_still_compose(tiny_recipe, tiny_model_dir, tmp_path):
    knobs = {**SPARSE, "regrow_every": 2}
    train(tiny_recipe(method="sparse", sparse=knobs, train={"max_steps": 5, "lr": 1e-2}), progress=False)
    assert main(["export", str(tiny_model_dir), "--apply-delta", str(tmp_path / "run"), "--merge",
                 str(tmp_path / "merged")]) == 0
    base = load_base(str(tiny_model_dir))[0]
    merged = dict(load_base(str(tmp_path / "merged"))[0].named_parameters())
    tuned = dict(load_any(str(tmp_path / "run"))[0].named_parameters())
    delta = dense(tmp_path / "run", base)
    for name, p in base.named_parameters():
        torch.testing.assert_close(merged[name], p + delta.get(name, 0), atol=1e-6, rtol=0)
        torch.testing.assert_close(tuned[name], merged[name], atol=1e-6, rtol=0)
