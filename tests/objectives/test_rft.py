"""RFT: sampled answers judged, the correct distinct ones added to the gold records, kept for resume."""
from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest

from tuna.models.load import load_base
from tuna.objectives import rft
from tuna.objectives.rewards import RewardErrors
from tuna.objectives.rft import RftKnobs, rewrite_train

CORRECT = {"12", "twelve: 12", "so 12"}


def judge(completion: str, example: dict) -> float:
    return 1.0 if completion in CORRECT else 0.0


@pytest.fixture
def scripted(monkeypatch, tiny_model_dir):
    """The model 'samples' these texts, in turn, for each prompt."""
    model, tokenizer = load_base(str(tiny_model_dir))
    monkeypatch.setitem(sys.modules, "judges", SimpleNamespace(judge=judge))
    script = ["12", "twelve: 12", "wrong", "12", "so 12", "13"]

    def fake_generate(model, prompts, *, group, **options):
        return [tokenizer(script[(p * group + k) % len(script)], add_special_tokens=False).input_ids
                for p in range(len(prompts)) for k in range(group)]

    monkeypatch.setattr(rft, "generate_ids", fake_generate)
    return model, tokenizer


def records(n=2):
    return [{"prompt": f"what is 6 + 6 ({i})?", "completion": "12"} for i in range(n)]


def test_correct_distinct_samples_join_their_gold_record(scripted, tmp_path):
    model, tokenizer = scripted
    knobs = RftKnobs(samples=3, judge=["judges:judge"])
    out, note = rewrite_train(records(), knobs, model, tokenizer, data_format="auto", max_tokens=64, batch_size=8,
                              run_dir=tmp_path, errors=RewardErrors(0))
    # prompt 0 samples "12", "twelve: 12", "wrong": "12" is the gold answer itself, "wrong" is rejected
    # prompt 1 samples "12", "so 12", "13"
    assert [r["completion"] for r in out] == ["12", "twelve: 12", "12", "so 12"]
    assert out.origins[1].endswith("(sampled answer 1)") and "rft added 2 correct distinct samples" in note
    saved = [json.loads(line) for line in (tmp_path / rft.SAMPLES).read_text().splitlines()]
    assert [v["kept"] for v in saved] == [["twelve: 12"], ["so 12"]]
    assert [s["score"] for s in saved[0]["samples"]] == [1.0, 1.0, 0.0]


def test_dedupe_by_answer_keeps_one_path_per_final_answer(scripted, tmp_path):
    model, tokenizer = scripted
    knobs = RftKnobs(samples=6, judge=["judges:judge"], dedupe="answer", answer_pattern=r"(\d+)\D*$")
    out, _ = rewrite_train(records(1), knobs, model, tokenizer, data_format="auto", max_tokens=64, batch_size=8,
                           run_dir=tmp_path, errors=RewardErrors(0))
    # the correct samples all end in 12: the first that is not the gold text itself is the one kept
    assert [r["completion"] for r in out] == ["12", "twelve: 12"]


def test_a_resume_reads_the_samples_back(scripted, tmp_path, monkeypatch):
    model, tokenizer = scripted
    knobs = RftKnobs(samples=3, judge=["judges:judge"])
    first, _ = rewrite_train(records(), knobs, model, tokenizer, data_format="auto", max_tokens=64, batch_size=8,
                             run_dir=tmp_path, errors=RewardErrors(0))
    monkeypatch.setattr(rft, "generate_ids", lambda *a, **k: pytest.fail("sampled again on resume"))
    again, note = rewrite_train(records(), knobs, model, tokenizer, data_format="auto", max_tokens=64, batch_size=8,
                                run_dir=tmp_path, errors=RewardErrors(0), resume=True, say=lambda m: None)
    assert list(again) == list(first)


def test_rft_trains_end_to_end(tiny_recipe, tmp_path):
    from tuna.train.loop import train

    result = train(tiny_recipe(objective="rft", rft={"samples": 2, "max_new_tokens": 4}, train={"max_steps": 2}),
                   progress=False)
    assert result.steps == 2 and (tmp_path / "run" / rft.SAMPLES).is_file()
