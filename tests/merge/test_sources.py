"""Every kind of input reads as the weights it stands for: the tensors a source yields equal the weights
of the model PEFT (or tuna's own loader) builds from it."""
from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from tuna.merge.sources import open_source
from tuna.models.load import load_any


def lora_adapter(base, out, seed: int, **options):
    """A LoRA adapter of `base` with non-zero random factors, saved by plain PEFT."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=False, **options)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    model.save_pretrained(out)
    return out


def merged_weights(base, adapter) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload().state_dict()


def run_dir(path, base, final_from=None):
    """A finished tuna run directory trained from `base`: config.yaml and final/."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"model": {"name": str(base)}}))
    if final_from is not None:
        shutil.copytree(final_from, path / "final")
    else:
        (path / "final").mkdir()
    return path


@pytest.mark.parametrize("options, lazy", [({}, True), ({"use_rslora": True}, True), ({"use_dora": True}, False)])
def test_an_adapter_reads_as_its_merged_weights(family, tmp_path, options, lazy):
    adapter = lora_adapter(family["base"], tmp_path / "adapter", seed=1, **options)
    expected = merged_weights(family["base"], adapter)
    for spec in (str(adapter), f"{family['base']}+{adapter}",
                 str(run_dir(tmp_path / "run", family["base"], final_from=adapter))):
        source = open_source(spec)
        assert source.lazy is lazy
        for key in source.keys():
            torch.testing.assert_close(source.get(key), expected[key], atol=1e-6, rtol=1e-6, msg=f"{spec}: {key}")
    assert not torch.equal(open_source(str(adapter)).get("model.layers.0.self_attn.q_proj.weight"),
                           open_source(str(family["base"])).get("model.layers.0.self_attn.q_proj.weight"))


def test_a_sparse_run_reads_as_base_plus_delta(family, tmp_path):
    from tuna.models.sparse_delta import save_delta

    run = run_dir(tmp_path / "sparse", family["base"], final_from=None)
    shutil.copy(family["base"] / "tokenizer.json", run / "final")
    shutil.copy(family["base"] / "tokenizer_config.json", run / "final")
    key = "model.layers.1.mlp.up_proj.weight"
    base = open_source(str(family["base"]))
    indices, values = torch.tensor([0, 5, 77]), torch.tensor([0.5, -1.0, 2.0])
    save_delta({key: (indices, values)}, {key: list(base.shape(key))}, run / "final")
    expected = load_any(str(run))[0].state_dict()
    source = open_source(str(run))
    for name in source.keys():
        torch.testing.assert_close(source.get(name), expected[name])
    assert (source.get(key) - base.get(key)).reshape(-1)[indices].tolist() == pytest.approx(values.tolist())


def test_a_full_run_and_a_checkpoint_read_lazily(family, tmp_path):
    run = run_dir(tmp_path / "full", family["base"], final_from=family["ft1"])
    for spec in (str(run), str(family["ft1"])):
        source = open_source(spec)
        assert source.lazy
        expected = load_any(spec)[0].state_dict()
        assert all(torch.equal(source.get(k), expected[k]) for k in source.keys())


def test_an_adapter_run_trained_with_rope_scaling_keeps_it(family, tmp_path):
    adapter = lora_adapter(family["base"], tmp_path / "adapter", seed=3)
    run = run_dir(tmp_path / "run", family["base"], final_from=adapter)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": str(family["base"]),
                                                               "rope_scaling": {"type": "linear", "factor": 2.0}}}))
    source = open_source(str(run))
    assert not source.lazy
    assert source.config().rope_scaling["factor"] == 2.0
    expected = merged_weights(family["base"], adapter)
    assert all(torch.allclose(source.get(k), expected[k], atol=1e-6) for k in source.keys())
