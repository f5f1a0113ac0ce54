import pytest
import torch

from tuna.errors import UserError
from tuna.export import export_merged
from tuna.train.loop import train


def greedy(model, ids, n=12):
    return model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)[0, ids.shape[1]:].tolist()


def test_merged_export_loads_with_plain_transformers_and_generates_like_the_adapter(tiny_recipe, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    train(tiny_recipe(train={"max_steps": 6, "lr": 5e-2}), progress=False)
    out = export_merged(tmp_path / "run", tmp_path / "merged")

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "run" / "final").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        assert greedy(merged, ids) == greedy(adapted, ids)
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(merged(ids).logits, base(ids).logits, atol=1e-3)  # the adapter did something


def test_export_refuses_a_non_run_and_a_non_empty_target(tmp_path, tiny_recipe):
    with pytest.raises(UserError, match="is not a finished tuna run"):
        export_merged(tmp_path, tmp_path / "out")
    train(tiny_recipe(train={"max_steps": 2}), progress=False)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep me")
    with pytest.raises(UserError, match="exists and is not empty"):
        export_merged(tmp_path / "run", tmp_path / "taken")
