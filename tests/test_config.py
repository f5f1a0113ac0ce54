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


def test_knobs_of_another_objective_are_an_error_and_are_left_out_of_the_resolved_config():
    with pytest.raises(UserError, match="`anchored_sft.\\*` knobs are set but objective is `dft`"):
        validate_recipe({"objective": "dft", "anchored_sft": {"kl_beta": 0.1}})
    assert "anchored_sft" not in validate_recipe({"objective": "sft"}).to_yaml()
    assert "kl_beta: 0.2" in validate_recipe({"objective": "anchored_sft", "anchored_sft": {"kl_beta": 0.2}}).to_yaml()


@pytest.mark.parametrize("raw, batching", [
    ({}, "packed_step"),  # sft with lora: packed by default
    ({"objective": "anchored_sft"}, "packed_step"),
    ({"method": "full", "data": {"batching": "sorted"}}, "sorted"),  # an explicit choice stays
    ({"objective": "dpo"}, "padded"),  # preference pairs are not single sequences
    ({"objective": "grpo"}, "padded"),  # nor are prompts
    ({"method": "longlora"}, "padded"),  # S2-Attn cannot keep packed examples apart
    ({"method": "prompt_tuning"}, "padded"),
])
def test_default_batching_packs_where_packing_is_exact(raw, batching):
    recipe = validate_recipe(raw)
    assert recipe.batching == batching
    assert recipe.data.batching == raw.get("data", {}).get("batching", "auto")  # the config keeps `auto`


def test_packing_is_shorthand_for_packed_batching_and_cannot_contradict_it():
    assert validate_recipe({"data": {"packing": True}}).data.batching == "packed"
    with pytest.raises(UserError, match="data.packing: true contradicts data.batching: sorted"):
        validate_recipe({"data": {"packing": True, "batching": "sorted"}})


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


def test_chain_lora_reads_both_its_own_and_the_lora_knobs():
    recipe = validate_recipe({"method": "chain_lora", "chain_lora": {"rounds": 2}, "lora": {"r": 4}})
    assert (recipe.chain_lora.rounds, recipe.lora.r) == (2, 4)
    with pytest.raises(UserError, match="`chain_lora.\\*` knobs are set but method is `lora`; .*set method: chain_lora"):
        validate_recipe({"method": "lora", "chain_lora": {"rounds": 2}})


@pytest.mark.parametrize("raw, message", [
    ({"method": "sparse", "sparse": {"density": 0}}, "sparse.density"),
    ({"lora": {"r": 0}}, "lora.r"),
    ({"lora": {"plus_ratio": 0.5}}, "lora.plus_ratio"),
    ({"method": "s2ft", "s2ft": {"heads_per_layer": 0, "ffn_channels": 0}}, "nothing would train"),
    ({"optim": {"layer_decay": 1.5}}, "optim.layer_decay"),
    ({"data": {"mask_thought_ratio": 1.0}}, "data.mask_thought_ratio"),
    ({"optim": {"clip_per_component": True}, "train": {"max_grad_norm": None}}, "train.max_grad_norm, which is unset"),
])
def test_out_of_range_knobs_fail_at_validation(raw, message):
    with pytest.raises(UserError, match=message):
        validate_recipe(raw)


def test_every_example_config_validates():
    from pathlib import Path

    from tuna.config import load_recipe
    from tuna.methods import REGISTRY

    from tuna.compare import load_matrix
    from tuna.objectives import REGISTRY as OBJECTIVES

    examples = sorted(Path(__file__).parent.parent.joinpath("examples").glob("*.yaml"))
    matrices = [path for path in examples if path.name.startswith("compare_")]
    for path in matrices:  # comparison matrices: valid, with a valid base and variants
        assert load_matrix(path).variants
    recipes = [load_recipe(path) for path in examples if path not in matrices]
    assert {r.method for r in recipes} == set(REGISTRY)  # every method has an example
    assert {r.objective for r in recipes} == set(OBJECTIVES)  # and every objective
