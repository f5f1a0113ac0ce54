"""`tuna merge` end to end: a loadable checkpoint with tokenizer, chat template and card; sharding;
vocabulary policies; and every bad input refused in one line (exit 2) with nothing half-written."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from tests.conftest import build_model
from tests.merge.test_against_mergekit import tensors_of
from tuna.cli import main
from tuna.merge import run as merge_run


def write(tmp_path, config: dict, name: str = "merge.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


def soup(family, **extra) -> dict:
    return {"merge_method": "linear", "models": [{"model": str(family["ft1"])}, {"model": str(family["ft2"])}], **extra}


def test_the_output_is_a_plain_checkpoint_with_tokenizer_template_and_card(family, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from tuna.models.load import load_tokenizer

    out = tmp_path / "out"
    assert main(["merge", write(tmp_path, soup(family, shard_size="20KB")), "--out", str(out), "--no-progress"]) == 0
    assert f"merged model written to {out}" in capsys.readouterr().out
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    model = AutoModelForCausalLM.from_pretrained(out)
    one, two = (AutoModelForCausalLM.from_pretrained(family[k]).state_dict() for k in ("ft1", "ft2"))
    for key in index:
        torch.testing.assert_close(model.state_dict()[key], (one[key] + two[key]) / 2)
    tokenizer = load_tokenizer(str(out))
    assert tokenizer.chat_template == load_tokenizer(str(family["base"])).chat_template
    card = (out / "README.md").read_text()
    assert "merge_method: linear" in card and str(family["ft2"]) in card and "tuna 0.1.0" in card


def test_a_failure_midway_leaves_no_output_and_no_leftovers(family, tmp_path, monkeypatch):
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk gone")
        return args[1][0]

    monkeypatch.setitem(merge_run.RULES, "linear", merge_run.RULES["linear"].__class__(
        "linear", failing, needs_base=False, defaults={"weight": 1.0, "normalize": True}, per_model=("weight",)))
    with pytest.raises(RuntimeError, match="disk gone"):
        merge_run.merge_models(soup(family), tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def widened(family, tmp_path_factory):
    """A fine-tune of the base with two tokens added to its vocabulary (and rows to its embeddings)."""
    from transformers import AutoModelForCausalLM

    from tuna.models.load import load_tokenizer

    out = tmp_path_factory.mktemp("widened")
    tokenizer = load_tokenizer(str(family["ft2"]))
    tokenizer.add_tokens(["<|tool|>", "<|result|>"])
    model = AutoModelForCausalLM.from_pretrained(family["ft2"])
    model.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        model.get_input_embeddings().weight[-2:] = torch.tensor([[1.5] * 32, [-2.5] * 32])
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_a_vocabulary_mismatch_is_refused_unless_tokenizer_source_says_how(family, widened, tmp_path, capsys):
    from tuna.models.load import load_tokenizer

    config = {"merge_method": "linear", "models": [{"model": str(family["ft1"])}, {"model": str(widened)}]}
    assert main(["merge", write(tmp_path, config), "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.embed_tokens.weight" in err
    assert "[400, 32]" in err and "[402, 32]" in err and "tokenizer_source" in err
    assert not (tmp_path / "refused").exists()

    one, wide = tensors_of(family["ft1"]), tensors_of(widened)
    key = "model.embed_tokens.weight"
    into_wide = tensors_of(merge_run.merge_models({**config, "tokenizer_source": str(widened)}, tmp_path / "wide",
                                                  progress=False))
    assert into_wide[key].shape == (402, 32)
    torch.testing.assert_close(into_wide[key][:400], (one[key] + wide[key][:400]) / 2)
    torch.testing.assert_close(into_wide[key][400:], wide[key][400:])  # only the widened model has them
    assert json.loads((tmp_path / "wide" / "config.json").read_text())["vocab_size"] == 402
    assert len(load_tokenizer(str(tmp_path / "wide"))) == 402

    config_base = {**config, "merge_method": "task_arithmetic", "base_model": str(family["base"]),
                   "tokenizer_source": "base"}
    into_base = tensors_of(merge_run.merge_models(config_base, tmp_path / "narrow", progress=False))
    base = tensors_of(family["base"])
    torch.testing.assert_close(into_base[key], base[key] + (one[key] - base[key]) + (wide[key][:400] - base[key]))


def test_a_shape_mismatch_outside_the_vocabulary_is_refused_whatever_the_policy(family, tmp_path, capsys):
    from tuna.models.load import load_tokenizer

    other = tmp_path / "narrow"
    tokenizer = load_tokenizer(str(family["base"]))
    build_model(other, "llama", len(tokenizer), layers=4, intermediate=48)
    tokenizer.save_pretrained(other)
    config = {"merge_method": "linear", "tokenizer_source": str(family["ft1"]),
              "models": [{"model": str(family["ft1"])}, {"model": str(other)}]}
    assert main(["merge", write(tmp_path, config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mlp.down_proj.weight" in err and "[32, 64]" in err and "[32, 48]" in err


BAD = {
    "missing model": ({"merge_method": "linear", "models": [{"model": "/nowhere/model"}]}, "model not found"),
    "one fine-tune for model_stock": ({"merge_method": "model_stock", "base_model": "{base}",
                                       "models": [{"model": "{ft1}"}]}, "model_stock needs at least 2"),
    "no base for task arithmetic": ({"merge_method": "ties", "models": [{"model": "{ft1}"}, {"model": "{ft2}"}]},
                                    "ties merges task vectors and needs base_model"),
    "density above 1": ({"merge_method": "ties", "base_model": "{base}",
                         "models": [{"model": "{ft1}", "parameters": {"density": 1.5}}]}, "density must be in (0, 1]"),
    "density 0": ({"merge_method": "dare_ties", "base_model": "{base}", "parameters": {"density": 0},
                   "models": [{"model": "{ft1}"}]}, "density must be in (0, 1]"),
    "unknown method": ({"merge_method": "frankenmerge", "models": [{"model": "{ft1}"}]},
                       "unknown merge_method 'frankenmerge'"),
    "unknown parameter": ({"merge_method": "linear", "parameters": {"densty": 0.5}, "models": [{"model": "{ft1}"}]},
                          "linear has no parameter 'densty'"),
    "lines on a soup": ({"merge_method": "linear", "lines": {"alpha": 0.5}, "models": [{"model": "{ft1}"}]},
                        "lines scales a merged task vector"),
    "text for a number": ({"merge_method": "linear", "models": [{"model": "{ft1}", "parameters": {"weight": "heavy"}}]},
                          "weight must be a number"),
    "unknown key": ({"merge_method": "linear", "modles": [], "models": [{"model": "{ft1}"}]}, "modles"),
    "two models for slerp": ({"merge_method": "slerp", "base_model": "{base}",
                              "models": [{"model": "{ft1}"}, {"model": "{ft2}"}]}, "slerp takes 1 model"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_exit_2(case, family, tmp_path, capsys):
    config, message = BAD[case]
    text = yaml.safe_dump(config).format(**{k: str(v) for k, v in family.items()})
    path = tmp_path / "merge.yaml"
    path.write_text(text)
    assert main(["merge", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_an_existing_output_is_not_overwritten(family, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["merge", write(tmp_path, soup(family)), "--out", str(tmp_path / "out")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_the_shipped_merge_examples_are_valid_recipes():
    from pathlib import Path

    from tuna.merge.config import load_merge_config
    from tuna.merge.run import checked_rule

    examples = sorted((Path(__file__).parents[2] / "examples" / "merge").glob("*.yaml"))
    assert len(examples) == 3
    for path in examples:
        config = load_merge_config(path)
        assert config.output == "adapter" or checked_rule(config).name == config.merge_method
