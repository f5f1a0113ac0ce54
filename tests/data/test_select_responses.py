import json

import pytest

from tuna.cli import main
from tuna.data.render import render_records
from tuna.errors import UserError
from tuna.eval.generate import generate
from tuna.data.scoring import heldout_loss
from tuna.models.load import load_base
from tuna.data.select_responses import select_responses


@pytest.fixture
def talker(tiny_dirs):
    """The tiny Qwen2, whose greedy answers are visible text."""
    return tiny_dirs["qwen2"]


def test_scores_are_length_normalised_log_likelihoods_and_the_best_is_kept(talker):
    model, tokenizer = load_base(str(talker))
    question = [{"role": "user", "content": "What is the date?"}]
    own = generate(model, tokenizer, [question], max_new_tokens=12)[0]
    candidates = ["March 5, 2021 -> 2021-03-05 and the quick brown fox", own, "Paris"]
    records = [{"messages": question, "responses": candidates, "id": 7}]
    rows, summary = select_responses(model, tokenizer, records, batch_size=2, progress=False)

    for candidate, got in zip(candidates, rows[0]["candidate_scores"]):
        # The mean log-prob per answer token is minus the SFT loss of that answer, trained as SFT would.
        item, _ = render_records([{"messages": question + [{"role": "assistant", "content": candidate}]}], "messages",
                                 tokenizer, train_on="completion", max_tokens=2048, overflow="truncate")
        expected = -heldout_loss(model, item, batch_size=1, pad_id=tokenizer.pad_token_id, device=model.device)["loss"]
        assert got == pytest.approx(expected, abs=1e-5)
    scores = rows[0]["candidate_scores"]
    assert scores.index(max(scores)) == 1  # the model's own greedy answer fits it best
    assert rows[0]["messages"] == question + [{"role": "assistant", "content": own}]
    assert rows[0]["id"] == 7 and "responses" not in rows[0]
    assert summary == {"records": 1, "candidates": 3, "truncated": 0, "picked_position": {"2": 1}}


def test_every_prompt_format_gets_its_answer_where_sft_reads_it(talker):
    model, tokenizer = load_base(str(talker))
    records = [{"instruction": "Say hi", "input": "politely", "responses": ["hi", "hello there"]},
               {"prompt": "2 + 2 =", "responses": [" 4"]}]
    rows, _ = select_responses(model, tokenizer, records, progress=False)
    assert rows[0]["output"] in ("hi", "hello there") and rows[0]["input"] == "politely"
    assert rows[1]["completion"] == " 4" and rows[1]["candidate_scores"][0] < 0


def test_bad_candidates_are_named(talker):
    model, tokenizer = load_base(str(talker))
    with pytest.raises(UserError, match="record 2: `responses` must be a non-empty list"):
        select_responses(model, tokenizer, [{"prompt": "a", "responses": ["x"]}, {"prompt": "b", "responses": []}])
    with pytest.raises(UserError, match="record 1: no prompt found"):
        select_responses(model, tokenizer, [{"question": "a", "responses": ["x"]}])


def test_cli_writes_sft_ready_records(talker, tmp_path, capsys):
    data = tmp_path / "candidates.jsonl"
    data.write_text(json.dumps({"prompt": "hello", "responses": ["world", "fox"]}) + "\n")
    out = tmp_path / "picked.jsonl"
    assert main(["data", "select-responses", str(data), "--model", str(talker), "--out", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["completion"] in ("world", "fox") and len(row["candidate_scores"]) == 2
    assert json.loads(capsys.readouterr().out)["records"] == 1

    assert main(["data", "select-responses", str(data), "--model", str(talker), "--out", str(out),
                 "--field", "answers"]) == 2
    assert "`answers` must be a non-empty list" in capsys.readouterr().err
