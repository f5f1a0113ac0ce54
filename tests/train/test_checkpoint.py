"""Every checkpoint of an adapter method holds the adapter in PEFT's format, loadable by PEFT alone, and
writing it changes nothing in the run."""
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tuna.rundir import read_metrics
from tuna.train import checkpoint
from tuna.train.loop import train

IDS = torch.tensor([[1, 40, 41, 42, 43, 44]])
METHODS = {
    "lora": {"method": "lora", "lora": {"dropout": 0.0}},
    "pissa": {"method": "lora", "lora": {"dropout": 0.0, "r": 4, "init": "pissa"}},
    "chain_lora": {"method": "chain_lora", "lora": {"dropout": 0.0}, "chain_lora": {"rounds": 2}},
    "ia3": {"method": "ia3"},
    "prompt_tuning": {"method": "prompt_tuning", "prompt_tuning": {"virtual_tokens": 4}},
}


def logits(model):
    training = model.training
    with torch.no_grad():
        out = model.eval()(input_ids=IDS).logits
    model.train(training)
    return out[:, -IDS.shape[1]:]  # prompt tuning's logits lead with its virtual tokens


@pytest.mark.parametrize("name", list(METHODS))
def test_each_checkpoint_adapter_loads_with_peft_as_the_model_was_at_that_step(name, tiny_recipe, tiny_model_dir,
                                                                               tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    seen, real_save = {}, checkpoint.save

    def save(directory, step, model, *args, **kwargs):
        seen[step] = logits(model)  # the training model as the checkpoint is written
        return real_save(directory, step, model, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", save)
    train(tiny_recipe(**METHODS[name], train={"max_steps": 4, "lr": 5e-2}, eval={"every": 0}), progress=False)
    run = tmp_path / "run"
    base = logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    for step in (2, 4):
        directory = run / "checkpoints" / f"step-{step:07d}"
        assert checkpoint.damage(directory) is None  # the adapter is inside the manifest, and whole
        adapter = directory / checkpoint.ADAPTER
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
        assert (seen[step] - base).abs().max() > 1e-3  # training moved it: the match means something
        torch.testing.assert_close(logits(loaded), seen[step], atol=1e-4, rtol=1e-4)
    last = load_file(run / "checkpoints" / "step-0000004" / checkpoint.ADAPTER / "adapter_model.safetensors")
    final = load_file(run / "final" / "adapter_model.safetensors")
    assert last.keys() == final.keys() and all(torch.equal(last[k], final[k]) for k in final)


def test_writing_adapters_into_checkpoints_changes_no_loss(tiny_recipe, tmp_path):
    """PiSSA's save loads and deletes a temporary adapter (drawing its initialisation, leaving the model in eval
    mode): a run that checkpoints every step trains as one that checkpoints once, and a resume from one of its
    checkpoints goes on as it did."""
    def recipe(name, every):
        return tiny_recipe(method="lora", lora={"dropout": 0.1, "r": 4, "init": "pissa"},  # dropout draws
                           train={"max_steps": 4, "lr": 5e-2, "save_every": every}, eval={"every": 0},
                           output_dir=str(tmp_path / name))

    def losses(name):
        return [r["train/loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl")]

    for name, every in (("every-step", 1), ("at-the-end", 0)):
        train(recipe(name, every), progress=False)
    assert losses("every-step") == losses("at-the-end") and len(set(losses("at-the-end"))) > 1
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "every-step", resumed)  # as a crash after step 3 would have left it
    shutil.rmtree(resumed / "checkpoints" / "step-0000004")
    shutil.rmtree(resumed / "final")
    (resumed / "summary.json").unlink()
    train(recipe("resumed", 1), resume=True, progress=False)
    assert losses("resumed") == losses("at-the-end")
