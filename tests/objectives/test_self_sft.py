import json
import sys
from types import SimpleNamespace

import pytest

from tuna.errors import UserError
from tuna.eval.generate import generate
from tuna.models.load import load_base
from tuna.objectives.rewards import RewardErrors
from tuna.objectives.self_sft import JUDGEMENTS, rewrite_train


def accept_flagged(completion: str, example: dict) -> float:
    return 1.0 if example["accept"] else 0.0


@pytest.fixture
def talker(tiny_dirs):
    """The tiny Qwen2: its greedy answers are visible text (the tied tiny Llama repeats the newline it is given)."""
    return tiny_dirs["qwen2"]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def data_args(recipe) -> dict:
    return dict(data_format=recipe.data.format, max_tokens=recipe.data.max_tokens, batch_size=recipe.eval.batch_size)


def own_answers(model_dir, prompts: list, max_new_tokens: int) -> list[str]:
    """The starting model's greedy answers, computed independently of S3FT's code."""
    model, tokenizer = load_base(str(model_dir))
    return [t.strip() for t in generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)]


def test_exactly_the_accepted_examples_are_replaced_by_the_models_own_response(talker, tiny_recipe, tmp_path,
                                                                              monkeypatch):
    monkeypatch.setitem(sys.modules, "judges", SimpleNamespace(accept_flagged=accept_flagged))
    flags = [True, False, False, True, True, False]
    records = [{"messages": [{"role": "user", "content": f"date {i}?"}, {"role": "assistant", "content": f"gold {i}"}],
                "accept": flag} for i, flag in enumerate(flags)]
    recipe = tiny_recipe(objective="self_sft", self_sft={"judge": ["judges:accept_flagged"], "max_new_tokens": 6})
    model, tokenizer = load_base(str(talker))
    rewritten, note = rewrite_train(records, recipe.self_sft, model, tokenizer, **data_args(recipe), run_dir=tmp_path, errors=RewardErrors(0))

    own = own_answers(talker, [r["messages"][:1] for r in records], max_new_tokens=6)
    assert all(own), "the tiny model must say something for this test to tell answers apart"
    for record, new, answer in zip(records, rewritten, own):
        expected = answer if record["accept"] else record["messages"][1]["content"]
        assert new["messages"][1]["content"] == expected
        assert new["messages"][0] == record["messages"][0]
    assert records[0]["messages"][1]["content"] == "gold 0"  # the caller's records are not modified
    assert f"replaced 3 of 6 gold responses" in note
    saved = [json.loads(line) for line in (tmp_path / JUDGEMENTS).read_text().splitlines()]
    assert [j["accepted"] for j in saved] == flags and [j["response"] for j in saved] == own


def test_the_built_in_judge_compares_with_the_gold_answer(talker, tiny_recipe, tmp_path):
    prompts = ["alpha", "beta", "gamma"]
    own = own_answers(talker, [[{"role": "user", "content": p}] for p in prompts], max_new_tokens=5)
    # The first gold output is what the model says anyway; the others differ from it.
    records = [{"instruction": p, "output": own[0] if i == 0 else f"{own[i]} and more"} for i, p in enumerate(prompts)]
    recipe = tiny_recipe(objective="self_sft", self_sft={"max_new_tokens": 5})
    model, tokenizer = load_base(str(talker))
    _, note = rewrite_train(records, recipe.self_sft, model, tokenizer, **data_args(recipe), run_dir=tmp_path, errors=RewardErrors(0))
    saved = [json.loads(line) for line in (tmp_path / JUDGEMENTS).read_text().splitlines()]
    assert [j["accepted"] for j in saved] == [True, False, False]
    assert "replaced 1 of 3" in note


def test_self_sft_trains_reports_the_count_and_resumes_from_its_judgements(talker, tiny_recipe, tmp_path,
                                                                          monkeypatch, capsys):
    from tuna.train.loop import train

    monkeypatch.setitem(sys.modules, "judges", SimpleNamespace(accept_flagged=accept_flagged))
    rows = [{"prompt": f"q{i}", "completion": f"a{i}", "accept": i % 2 == 0} for i in range(10)]
    data = write_rows(tmp_path / "sft.jsonl", rows)
    recipe = tiny_recipe(model=str(talker), objective="self_sft", data={"path": str(data), "eval_split": 0.2},
                         self_sft={"judge": ["judges:accept_flagged"], "max_new_tokens": 4},
                         train={"max_steps": 4, "micro_batch_size": 2, "save_every": 2})
    result = train(recipe, progress=False)
    assert result.steps == 4 and result.eval_loss is not None
    assert "self_sft replaced 4 of 8 gold responses" in capsys.readouterr().err  # 8 train rows, half flagged
    judgements = (tmp_path / "run" / JUDGEMENTS).read_text()

    # A resumed run reads the judgements back rather than generating again.
    (tmp_path / "run" / "final").rename(tmp_path / "final-moved")
    monkeypatch.setattr("tuna.objectives.self_sft.judge_own_responses", lambda *a, **k: pytest.fail("regenerated"))
    recipe.train.max_steps = 6
    train(recipe, resume=True, progress=False)
    assert "judgements read from" in capsys.readouterr().err
    assert (tmp_path / "run" / JUDGEMENTS).read_text() == judgements


def test_a_new_run_judges_afresh_even_where_old_judgements_lie(talker, tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "judges", SimpleNamespace(accept_flagged=accept_flagged))
    records = [{"prompt": f"q{i}", "completion": f"a{i}", "accept": True} for i in range(3)]
    recipe = tiny_recipe(objective="self_sft", self_sft={"judge": ["judges:accept_flagged"], "max_new_tokens": 3})
    model, tokenizer = load_base(str(talker))
    rewrite_train(records, recipe.self_sft, model, tokenizer, **data_args(recipe), run_dir=tmp_path, errors=RewardErrors(0))
    recipe.self_sft.judge = ["exact_match"]  # another judge: the saved judgements no longer apply
    _, note = rewrite_train(records, recipe.self_sft, model, tokenizer, **data_args(recipe), run_dir=tmp_path, errors=RewardErrors(0))
    assert "replaced 0 of 3" in note


def test_self_sft_refuses_data_without_prompts_and_judges_missing_fields(talker, tiny_recipe, tmp_path):
    model, tokenizer = load_base(str(talker))
    recipe = tiny_recipe(objective="self_sft")
    with pytest.raises(UserError, match="needs prompts with gold responses"):
        rewrite_train([{"text": "just text"}], recipe.self_sft, model, tokenizer, **data_args(recipe), run_dir=tmp_path, errors=RewardErrors(0))
    recipe = tiny_recipe(objective="self_sft", self_sft={"judge": ["json_schema"]})
    with pytest.raises(UserError, match="reward json_schema needs a `schema` field"):
        rewrite_train([{"prompt": "p", "completion": "c"}], recipe.self_sft, model, tokenizer, **data_args(recipe), run_dir=tmp_path,
                      errors=RewardErrors(0))
    assert not (tmp_path / JUDGEMENTS).exists()
