"""BitDelta: signs and a scale per matrix, the scales distilled against the fine-tune, loadable like a run."""
from __future__ import annotations

import pytest
import torch

from tuna.cli import main
from tuna.export import export_bitdelta
from tuna.models import bitdelta
from tuna.models.load import load_any, load_base
from tuna.train.loop import train


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_model_dir):
    from tests.conftest import write_jsonl
    from tuna.config import validate_recipe

    root = tmp_path_factory.mktemp("bitdelta")
    rows = [{"messages": [{"role": "user", "content": f"what is {i} + {i}?"},
                          {"role": "assistant", "content": f"{2 * i}"}]} for i in range(40)]
    data = write_jsonl(root / "data.jsonl", rows)
    recipe = validate_recipe({"model": str(tiny_model_dir), "method": "full", "data": {"path": str(data)},
                              "train": {"max_steps": 4, "lr": 1e-2, "device": "cpu", "precision": "fp32"},
                              "eval": {"every": 0}, "output_dir": str(root / "run")})
    train(recipe, progress=False)
    return root / "run"


def test_the_initial_compression_is_sign_times_mean_absolute_delta(full_run, tiny_model_dir):
    base, tuned = load_base(str(tiny_model_dir))[0], load_any(str(full_run))[0]
    signs, scales, exact = bitdelta.compress(base, tuned)
    base_p, tuned_p = dict(base.named_parameters()), dict(tuned.named_parameters())
    assert set(signs) == set(bitdelta.compressible(tuned)) and signs
    for name, sign in signs.items():
        delta = tuned_p[name] - base_p[name]
        assert torch.equal(sign, torch.where(delta >= 0, 1, -1).to(torch.int8))
        assert float(scales[name]) == pytest.approx(float(delta.abs().mean()))
    assert set(exact) <= set(tuned_p) - set(signs)  # norms and embeddings that moved are kept exactly


def test_distilled_scales_bring_the_logits_closer_and_the_directory_loads_as_base_plus_scaled_signs(
        full_run, tiny_model_dir, tmp_path):
    done = export_bitdelta(full_run, tmp_path / "bd", steps=30, batches=2, lr=1e-3, progress=False)
    assert done["distillation_mse_after"] < done["distillation_mse_before"]
    base, signs, scales, exact = bitdelta.load(tmp_path / "bd")
    assert base == str(tiny_model_dir)
    loaded, _ = load_any(str(tmp_path / "bd"))
    reference = dict(load_base(str(tiny_model_dir))[0].named_parameters())
    for name, p in loaded.named_parameters():
        expected = reference[name] + (scales[name] * signs[name].float() if name in signs else exact.get(name, 0))
        torch.testing.assert_close(p, expected, atol=0, rtol=0)
    packed = sum(s.numel() for s in signs.values()) / 8
    assert done["bytes"] < packed + sum(d.numel() * 4 for d in exact.values()) + 64 * 1024  # ~1 bit per weight


def test_bitdelta_export_refuses_what_it_cannot_compress(tmp_path, tiny_recipe, capsys):
    lora = train(tiny_recipe(method="lora", train={"max_steps": 1}, eval={"every": 0}), progress=False)
    assert main(["export", lora.run_dir, "--bitdelta", str(tmp_path / "x")]) == 2
    assert "BitDelta compresses the delta of a full fine-tune" in capsys.readouterr().err
    assert main(["export", lora.run_dir]) == 2
    assert "needs one of --merge OUT or --bitdelta OUT" in capsys.readouterr().err
