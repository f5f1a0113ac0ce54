"""Other tools' config keys are read as tuna's (with a note), conflicts are refused, and `tuna config show`
prints every key with its meaning."""
from __future__ import annotations

import pytest
import yaml

from tuna.cli import main
from tuna.config import load_recipe, validate_recipe
from tuna.errors import UserError

READ_AS = [  # (foreign config, where tuna reads it, the value expected there)
    ({"learning_rate": 3e-4}, ("train", "lr"), 3e-4),
    ({"train": {"learning_rate": 3e-4}}, ("train", "lr"), 3e-4),
    ({"gradient_accumulation_steps": 4}, ("train", "grad_accum"), 4),
    ({"train": {"gradient_accumulation_steps": 4}}, ("train", "grad_accum"), 4),
    ({"per_device_train_batch_size": 2}, ("train", "micro_batch_size"), 2),
    ({"num_train_epochs": 3}, ("train", "epochs"), 3),
    ({"lora_r": 8}, ("lora", "r"), 8),
    ({"lora_alpha": 16}, ("lora", "alpha"), 16),
    ({"adapter": "lora", "lora_r": 4}, ("method",), "lora"),
    ({"base_model": "my-model"}, ("model", "name"), "my-model"),
    ({"sequence_len": 512}, ("data", "max_tokens"), 512),
    ({"max_seq_length": 512}, ("data", "max_tokens"), 512),
]


@pytest.mark.parametrize("raw, where, value", READ_AS, ids=[str(r) for r, _, _ in READ_AS])
def test_foreign_keys_are_read_as_tunas(raw, where, value, tmp_path, capsys):
    path = tmp_path / "foreign.yaml"
    path.write_text(yaml.safe_dump(raw))
    found = load_recipe(path)
    for part in where:
        found = getattr(found, part)
    assert found == value
    assert f"as `{'.'.join(where)}`" in capsys.readouterr().err


def test_a_foreign_key_beside_its_tuna_key_and_qlora_are_refused():
    with pytest.raises(UserError, match=r"`learning_rate` \(the name .*\) and `train.lr` are both set"):
        validate_recipe({"learning_rate": 1e-4, "train": {"lr": 2e-4}})
    with pytest.raises(UserError, match="adapter: qlora .* has no tuna equivalent yet"):
        validate_recipe({"adapter": "qlora"})


def test_config_show_prints_every_key_with_its_meaning_and_changed_defaults(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"method": "dora", "lora": {"r": 4}, "train": {"lr": 1e-3}}))
    assert main(["config", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  r: 4  # default 16" in out and "method: dora" in out and "lora:" in out
    assert "  max_tokens: 1024  # longest rendered example, in tokens" in out
    assert main(["config", "show", "--set", "train.seed=3"]) == 0
    assert "  seed: 3  # default 0" in capsys.readouterr().out
