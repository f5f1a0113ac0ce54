"""HFT's defining mechanism: half of every category trains, the frozen half stays bit-identical, re-drawn per round."""
import torch

from tuna.methods.base import round_of
from tuna.methods.hft import categories, selected_units
from tuna.models.load import load_base
from tuna.train.loop import train


def test_half_of_every_category_is_selected_and_rounds_redraw(tiny_dirs):
    for directory in tiny_dirs.values():
        model, _ = load_base(str(directory))
        groups = categories(model)
        assert {k.split("/")[-1] for k in groups} == {"self_attn", "mlp", "norms", "outside"}
        chosen = selected_units(model, seed=0, round_index=0)
        for name, units in groups.items():
            picked = len(chosen & set(units))
            assert picked in (len(units) // 2, (len(units) + 1) // 2), name
        all_units = sum(len(u) for u in groups.values())
        assert abs(len(chosen) - all_units / 2) <= 1
        assert selected_units(model, 0, 0) == chosen
        assert any(selected_units(model, 0, r) != chosen for r in (1, 2, 3))
    assert [round_of(s, 4, 8) for s in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_frozen_half_is_bit_identical_and_the_trained_half_moves(tiny_recipe, tiny_model_dir, tmp_path):
    base, _ = load_base(str(tiny_model_dir))
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    chosen = selected_units(base, seed=3, round_index=0)
    train(tiny_recipe(method="hft", hft={"rounds": 1, "seed": 3}, train={"max_steps": 3, "lr": 1e-2, "weight_decay": 0.1}),
          progress=False)
    after, _ = load_base(str(tmp_path / "run" / "final"))
    for name, p in after.named_parameters():
        if name.rsplit(".", 1)[0] in chosen:
            assert not torch.equal(p, before[name]), f"{name} was selected but did not change"
        else:
            assert torch.equal(p, before[name]), f"{name} was frozen but changed"


def test_a_later_round_trains_a_different_half(tiny_recipe, tiny_model_dir, tmp_path):
    base, _ = load_base(str(tiny_model_dir))
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    rounds = [selected_units(base, 0, r) for r in (0, 1)]
    train(tiny_recipe(method="hft", hft={"rounds": 2}, train={"max_steps": 4, "lr": 1e-2}), progress=False)
    after, _ = load_base(str(tmp_path / "run" / "final"))
    moved = {n.rsplit(".", 1)[0] for n, p in after.named_parameters() if not torch.equal(p, before[n])}
    assert moved == rounds[0] | rounds[1]
    assert moved != rounds[0]
