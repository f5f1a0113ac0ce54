import pytest
import torch

from tuna.errors import UserError
from tuna.methods import REGISTRY
from tuna.models.layers import count_parameters
from tuna.models.load import load_any, load_base
from tuna.models.sparse_delta import read_delta
from tuna.train.loop import train

S2FT = {"heads_per_layer": 1, "ffn_channels": 8, "seed": 3}


def test_trainable_count_is_the_selected_columns(tiny_model_dir, tiny_recipe):
    model, _ = load_base(str(tiny_model_dir))
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    model = REGISTRY["s2ft"].from_recipe(tiny_recipe(method="s2ft", s2ft=S2FT)).prepare(model)
    trainable, _ = count_parameters(model)
    per_block = config.hidden_size * (1 * head_dim + 8)
    assert trainable == config.num_hidden_layers * per_block


def test_only_the_selected_slices_change(tiny_model_dir, tiny_recipe, tmp_path):
    train(tiny_recipe(method="s2ft", s2ft=S2FT, train={"max_steps": 4, "lr": 1e-2}), progress=False)
    base = dict(load_base(str(tiny_model_dir))[0].named_parameters())
    tuned = dict(load_any(str(tmp_path / "run"))[0].named_parameters())
    head_dim = 32 // 4
    seen = set()
    for name, p in base.items():
        changed_columns = (tuned[name] != p).any(dim=0).nonzero().squeeze(1).tolist() if p.ndim == 2 else []
        if name.endswith("o_proj.weight"):
            assert len(changed_columns) == head_dim  # exactly one head's columns
            head = changed_columns[0] // head_dim
            assert changed_columns == list(range(head * head_dim, (head + 1) * head_dim))
            seen.add(name)
        elif name.endswith("down_proj.weight"):
            assert len(changed_columns) == 8
            seen.add(name)
        else:
            assert torch.equal(tuned[name], p), name  # everything else bit-identical
    assert len(seen) == 4
    delta, _ = read_delta(tmp_path / "run")
    assert sorted(delta) == sorted(seen)


def test_dense_compute_equals_the_merged_weights(tiny_model_dir, tiny_recipe, tmp_path):
    model, _ = load_base(str(tiny_model_dir))
    s2ft = REGISTRY["s2ft"].from_recipe(tiny_recipe(method="s2ft", s2ft=S2FT))
    model = s2ft.prepare(model)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if p.requires_grad:
            p.data.normal_()
    s2ft.save_final(model, tmp_path)
    merged, _ = load_base(str(tiny_model_dir))
    from tuna.models.sparse_delta import apply_delta

    apply_delta(merged, tmp_path)
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, merged(ids).logits, atol=1e-5, rtol=1e-5)


def test_more_heads_than_the_model_has_is_an_error(tiny_recipe):
    with pytest.raises(UserError, match="s2ft.heads_per_layer is 9 but the model has 4 heads"):
        train(tiny_recipe(method="s2ft", s2ft={"heads_per_layer": 9}), progress=False)
