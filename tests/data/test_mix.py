"""data.sources: mixes draw by weight or by count, deterministically, across formats."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.conftest import write_jsonl
from tuna.data.mix import Source, mixed_records
from tuna.errors import UserError


def chat(n: int, tag: str) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"{tag} {i}"}, {"role": "assistant", "content": tag}]}
            for i in range(n)]


def source_of(origin: str) -> str:
    return origin.split(",")[0].rsplit("/", 1)[-1]


def test_weights_3_to_1_draw_in_that_ratio(tmp_path):
    a, b = write_jsonl(tmp_path / "a.jsonl", chat(200, "a")), write_jsonl(tmp_path / "b.jsonl", chat(200, "b"))
    rows, note = mixed_records([Source(path=str(a), weight=3), Source(path=str(b), weight=1)], None, seed=0)
    assert len(rows) == 400
    share = Counter(source_of(o) for o in rows.origins)["a.jsonl"] / 400
    assert abs(share - 0.75) <= 0.05
    assert note.startswith("mix: a.jsonl ") and "b.jsonl" in note
    again, _ = mixed_records([Source(path=str(a), weight=3), Source(path=str(b), weight=1)], None, seed=0)
    assert again == rows and again.origins == rows.origins  # the seed decides the mix
    assert [r["messages"][1]["content"] for r, o in zip(rows, rows.origins) if "a.jsonl" in o] == \
        ["a"] * round(share * 400)  # each record's origin names its own file


def test_a_count_source_gives_exactly_that_many(tmp_path):
    a, b = write_jsonl(tmp_path / "a.jsonl", chat(5, "a")), write_jsonl(tmp_path / "b.jsonl", chat(30, "b"))
    rows, _ = mixed_records([Source(path=str(a), count=12), Source(path=str(b))], None, seed=1)
    counts = Counter(source_of(o) for o in rows.origins)
    assert counts == {"a.jsonl": 12, "b.jsonl": 30}
    repeats = Counter(r["messages"][0]["content"] for r in rows if r["messages"][1]["content"] == "a")
    assert sorted(repeats.values()) == [2, 2, 2, 3, 3]  # 12 of 5: each record twice before any third time


def test_formats_mix_as_messages_and_text_is_refused(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", chat(4, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", [{"instruction": f"q{i}", "output": "b"} for i in range(4)])
    c = write_jsonl(tmp_path / "c.jsonl", [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "c"}]}])
    rows, _ = mixed_records([Source(path=str(a)), Source(path=str(b)), Source(path=str(c))], None, seed=0)
    assert all("messages" in r for r in rows) and {r["messages"][-1]["content"] for r in rows} == {"a", "b", "c"}
    t = write_jsonl(tmp_path / "t.jsonl", [{"text": "plain"}])
    with pytest.raises(UserError, match="t.jsonl holds text records, which mix only with text sources"):
        mixed_records([Source(path=str(a)), Source(path=str(t))], None, seed=0)


def test_a_recipe_with_sources_trains_and_fingerprints_each_source(tmp_path, tiny_model_dir):
    from tuna.config import validate_recipe
    from tuna.data.fingerprint import data_fingerprint
    from tuna.train.loop import train

    a, b = write_jsonl(tmp_path / "a.jsonl", chat(12, "a")), write_jsonl(tmp_path / "b.jsonl", chat(4, "b"))
    raw = {"model": str(tiny_model_dir), "data": {"sources": [{"path": str(a), "weight": 1}, {"path": str(b), "count": 8}],
                                                  "eval_split": 0},
           "train": {"max_steps": 2, "micro_batch_size": 2, "device": "cpu", "precision": "fp32"},
           "output_dir": str(tmp_path / "run")}
    recipe = validate_recipe(raw)
    result = train(recipe, progress=False)
    assert result.steps == 2 and "mix: a.jsonl 12 (60.0%), b.jsonl 8 (40.0%)" in result.data
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["data"] == result.data  # recorded in the run
    assert set(data_fingerprint(recipe.data)) == {"train source 1", "train source 2"}
    with pytest.raises(UserError, match="set data.path or data.sources, not both"):
        validate_recipe({**raw, "data": {**raw["data"], "path": str(a)}})
    with pytest.raises(UserError, match="weight or count, not both"):
        validate_recipe({**raw, "data": {"sources": [{"path": str(a), "weight": 1, "count": 2}]}})
