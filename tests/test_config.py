import pytest

from tuna.config import load_recipe, validate_recipe
from tuna.errors import UserError


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(UserError, match=r"unknown config key `train.lrr`; did you mean `train.lr`"):
        validate_recipe({"train": {"lrr": 1e-4}})
    with pytest.raises(UserError, match=r"`trian`; did you mean `train`"):
        validate_recipe({"trian": {}})


def test_set_overrides_any_key_and_parses_values(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: some/dir\nmethod: lora\ntrain:\n  lr: 0.1\n")
    recipe = load_recipe(cfg, ["train.lr=3e-4", "lora.r=8", "model.name=other", "data.eval_split=0.25"])
    assert recipe.train.lr == 3e-4 and recipe.lora.r == 8 and recipe.model.name == "other"
    assert recipe.data.eval_split == 0.25


def test_knobs_of_another_method_are_an_error():
    with pytest.raises(UserError, match="`lora.\\*` knobs are set but method is `full`"):
        validate_recipe({"method": "full", "lora": {"r": 4}})


def test_text_data_cannot_train_on_completion_only():
    with pytest.raises(UserError, match="plain `text` data trains on all tokens"):
        validate_recipe({"data": {"format": "text", "train_on": "completion"}})


def test_out_of_range_values_fail_before_any_compute():
    with pytest.raises(UserError, match="train.micro_batch_size"):
        validate_recipe({"train": {"micro_batch_size": 0}})
    with pytest.raises(UserError, match="eval_split must be a fraction"):
        validate_recipe({"data": {"eval_split": 1.5}})


def test_resolved_yaml_round_trips_and_omits_other_methods_sections():
    recipe = validate_recipe({"method": "freeze", "freeze": {"trainable_layers": 3}})
    import yaml

    dumped = yaml.safe_load(recipe.to_yaml())
    assert "lora" not in dumped and dumped["freeze"]["trainable_layers"] == 3
    assert validate_recipe(dumped) == recipe
