import json

import pytest
import torch

from tuna.data.preference import collate_pairs
from tuna.data.preference import Pair, render_pairs
from tuna.methods import REGISTRY as METHODS
from tuna.models.load import load_base
from tuna.objectives import reference_logps
from tuna.objectives.base import ObjectiveContext
from tuna.models.forward import answer_logps
from tuna.objectives.pairwise import reference_answer_logps
from tuna.objectives.reference import frozen_copy, reference_logits
from tuna.objectives.reference_logps import attach_reference_logps
from tuna.train.loop import train
from tests.conftest import write_jsonl

ROWS = [{"prompt": f"what is {i} + {i}?", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1}"} for i in range(12)]


@pytest.fixture
def pairs(tiny_tokenizer) -> list[Pair]:
    return render_pairs(ROWS, tiny_tokenizer, max_tokens=256, overflow="truncate")[0]


@pytest.fixture
def preference_data(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", ROWS * 3)


def sequence_logps(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return answer_logps(model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits, batch["labels"])[0]


def test_disabled_adapter_reference_gives_the_base_models_answer_logps(tiny_model_dir, tiny_recipe, pairs):
    recipe = tiny_recipe(method="lora", lora={"r": 4, "dropout": 0.0})
    model = METHODS["lora"].from_recipe(recipe).prepare(load_base(str(tiny_model_dir))[0]).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)  # a trained adapter
    batch = collate_pairs(pairs[:4], pad_id=0)
    base = sequence_logps(load_base(str(tiny_model_dir))[0].eval(), batch)
    reference = reference_answer_logps(batch, ObjectiveContext(None, reference_logits(model)))
    torch.testing.assert_close(reference, base)
    assert not torch.allclose(sequence_logps(model, batch), base, atol=1e-3)


def test_cached_reference_logps_equal_a_live_frozen_copy_and_are_rebuilt_for_other_data(tiny_model_dir, pairs, tmp_path):
    model = load_base(str(tiny_model_dir))[0]
    options = dict(precision="fp32", say=lambda msg: None, batch_size=3, pad_id=0, device=torch.device("cpu"))
    attach_reference_logps(model, {"train": pairs[:8], "eval": pairs[8:]}, tmp_path, **options)
    frozen = frozen_copy(model)
    for start in range(0, len(pairs), 4):  # other batch compositions than the cache's
        batch = collate_pairs(pairs[start : start + 4], pad_id=0)
        live = answer_logps(reference_logits(model, frozen)(batch), batch["labels"])[0]
        torch.testing.assert_close(batch["reference_logps"], live, rtol=1e-5, atol=1e-5)

    cache = tmp_path / reference_logps.CACHE
    written = cache.stat().st_mtime_ns
    again = [Pair(p.chosen, p.rejected) for p in pairs]
    attach_reference_logps(model, {"train": again[:8], "eval": again[8:]}, tmp_path, **options)
    assert cache.stat().st_mtime_ns == written and [p.reference_logps for p in again] == [p.reference_logps for p in pairs]
    other = [Pair(p.rejected, p.chosen) for p in pairs]  # other data: the cache must not be read
    attach_reference_logps(model, {"train": other[:8], "eval": other[8:]}, tmp_path, **options)
    assert [p.reference_logps for p in other] == [p.reference_logps[::-1] for p in pairs]


def test_a_resumed_run_reuses_the_cache_and_a_live_reference_makes_none(tiny_recipe, preference_data, tmp_path,
                                                                          monkeypatch):
    computed = []
    real = reference_logps.compute
    monkeypatch.setattr(reference_logps, "compute", lambda model, pairs, **kw: computed.append(len(pairs)) or
                        real(model, pairs, **kw))
    options = dict(method="full", objective="dpo", data={"path": str(preference_data)}, eval={"every": 0})
    train(tiny_recipe(**options, train={"max_steps": 2, "save_every": 2}), progress=False)
    n_eval = int(0.2 * 3 * len(ROWS))  # tiny_recipe's eval_split
    assert sorted(computed) == sorted([n_eval, 3 * len(ROWS) - n_eval])  # the eval and train pairs, once each
    resumed = train(tiny_recipe(**options, train={"max_steps": 4, "save_every": 2}), resume=True, progress=False)
    assert resumed.steps == 4 and len(computed) == 2

    computed.clear()
    train(tiny_recipe(**{**options, "method": "lora"}, output_dir=str(tmp_path / "lora")), progress=False)
    assert computed == [] and not (tmp_path / "lora" / reference_logps.CACHE).exists()
    rows = [json.loads(line) for line in open(tmp_path / "lora" / "metrics.jsonl")]
    assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # step 1: the policy is the reference
