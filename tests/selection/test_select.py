"""Each strategy does what its paper defines, checked by hand on a tiny random model; chaining, reuse of
saved scores, determinism, and one-line refusals."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import write_jsonl
from tuna.cli import main
from tuna.data.formats import to_example
from tuna.data.render import render_example
from tuna.models.forward import IGNORE
from tuna.selection import items as scoring
from tuna.selection.strategies import Context, k_center, run_chain
from tuna.selection.run import select_records

ANSWERS = ["4", "six", "a b c d e f", "2021-03-05", "the quick brown fox", "Paris", "0 1 2 3", "yes yes yes",
           "March", "x", "hello world", "seven eight nine ten eleven twelve"]


@pytest.fixture
def pool(tmp_path):
    rows = [{"instruction": f"question {i}: what is it?", "output": answer} for i, answer in enumerate(ANSWERS)]
    return write_jsonl(tmp_path / "pool.jsonl", rows)


def mean_answer_loss(model, ids: list[int], labels: list[int]) -> float:
    """By hand: mean cross-entropy of each labelled token given the ones before it."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    losses = [torch.nn.functional.cross_entropy(logits[t - 1], torch.tensor(labels[t])).item()
              for t in range(1, len(ids)) if labels[t] != IGNORE]
    return sum(losses) / len(losses)


def selected(out) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()]


def scores_of(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()[1:]]


def test_ifd_equals_the_hand_computed_ratio_and_drops_ifd_at_least_1(pool, tiny_model_dir, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    summary = select_records(pool, "ifd", "5", tmp_path / "out.jsonl", model=str(tiny_model_dir),
                             scores_out=tmp_path / "scores.jsonl", progress=False)
    scores = [row["ifd"] for row in scores_of(tmp_path / "scores.jsonl")]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    for record, score in zip([json.loads(line) for line in pool.read_text().splitlines()], scores):
        item = render_example(to_example(record, "instruction", 0), tiny_tokenizer)
        answer = [label for label in item.labels if label != IGNORE]
        by_hand = mean_answer_loss(model, item.input_ids, item.labels) / mean_answer_loss(model, answer, answer) \
            if len(answer) > 1 else math.inf
        assert score == pytest.approx(by_hand, rel=1e-4)
    below = [i for i, s in enumerate(scores) if s < 1]
    assert 0 < len(below) < len(scores)  # the planted pool has both kinds
    kept = [ANSWERS.index(r["output"]) for r in selected(tmp_path / "out.jsonl")]
    assert sorted(kept) == sorted(sorted(below, key=lambda i: -scores[i])[:5])
    assert summary["kept"] == min(5, len(below))


def test_longest_and_length_pick_exactly(pool, tiny_model_dir, tiny_tokenizer, tmp_path):
    from tuna.data.read import read_raw

    items = scoring.rendered(read_raw(pool), tiny_tokenizer, 2048)
    answer_lengths = [item.target_count for item in items]
    select_records(pool, "longest", "3", tmp_path / "long.jsonl", model=str(tiny_model_dir), progress=False)
    expected = sorted(range(len(ANSWERS)), key=lambda i: (-answer_lengths[i], i))[:3]
    assert [r["output"] for r in selected(tmp_path / "long.jsonl")] == [ANSWERS[i] for i in sorted(expected)]
    lengths = [len(item.input_ids) for item in items]
    low, high = sorted(lengths)[3], sorted(lengths)[8]
    select_records(pool, "length", "100%", tmp_path / "window.jsonl", model=str(tiny_model_dir), progress=False,
                   length_min=low, length_max=high)
    assert [r["output"] for r in selected(tmp_path / "window.jsonl")] == \
        [a for a, n in zip(ANSWERS, lengths) if low <= n <= high]


def test_k_center_takes_one_point_per_cluster_before_a_second_from_any():
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(8)[:4] * 10
    points = torch.cat([centre + 0.1 * torch.randn(5, 8, generator=generator) for centre in centres])
    cluster = [i // 5 for i in range(20)]
    picks = k_center(points, list(range(20)), 8, first=7)
    assert picks[0] == 7 and sorted(cluster[i] for i in picks[:4]) == [0, 1, 2, 3]
    assert len(set(picks)) == 8


def test_lobass_scores_are_the_relative_loss_drop_after_the_short_fine_tune(pool, tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from tuna.data.read import read_raw

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    items = scoring.rendered(read_raw(pool), tiny_tokenizer, 2048)
    ctx = Context(rendered=items, pad_id=tiny_tokenizer.pad_token_id, load_model=lambda: model, lobass_steps=5,
                  lobass_slice=0.25, lobass_lr=1e-2, seed=3)
    picks = run_chain(["lobass"], 4, ctx)
    before_weights = {k: v.clone() for k, v in model.state_dict().items()}
    slice_ = torch.randperm(len(items), generator=torch.Generator().manual_seed(3)).tolist()[:3]
    tuned = scoring.short_fine_tune(model, [items[i] for i in slice_], pad_id=tiny_tokenizer.pad_token_id, steps=5,
                                    batch_size=8, lr=1e-2, seed=3, progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before_weights.items())  # the scorer is untouched
    by_hand = []
    for item in items:
        before = mean_answer_loss(model, item.input_ids, item.labels)
        after = mean_answer_loss(tuned, item.input_ids, item.labels)
        by_hand.append((before - after) / before)
    assert ctx.scores["lobass"] == pytest.approx(by_hand, rel=1e-4, abs=1e-6)
    assert picks == sorted(range(len(items)), key=lambda i: (-by_hand[i], i))[:4]
    assert sum(by_hand[i] for i in slice_) / 3 > sum(by_hand) / len(by_hand)  # it learned its slice most


def test_a_chain_narrows_to_twice_the_budget_then_picks(pool, tiny_model_dir, tmp_path):
    select_records(pool, "longest,diversity", "2", tmp_path / "out.jsonl", model=str(tiny_model_dir),
                   scores_out=tmp_path / "s.jsonl", progress=False)
    longest = [row["longest"] for row in scores_of(tmp_path / "s.jsonl")]
    four = set(sorted(range(len(ANSWERS)), key=lambda i: (-longest[i], i))[:4])
    kept = {ANSWERS.index(r["output"]) for r in selected(tmp_path / "out.jsonl")}
    assert len(kept) == 2 and kept <= four


def test_saved_scores_are_reused_and_selection_is_deterministic(pool, tiny_model_dir, tmp_path, monkeypatch):
    args = dict(model=str(tiny_model_dir), scores_out=tmp_path / "s.jsonl", progress=False, seed=4)
    select_records(pool, "perplexity,diversity", "3", tmp_path / "a.jsonl", **args)

    def no_model(*a, **k):
        raise AssertionError("the scorer was loaded again")

    monkeypatch.setattr("tuna.models.load.load_base", no_model)
    select_records(pool, "perplexity,diversity", "3", tmp_path / "b.jsonl", **args)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    select_records(pool, "random", "4", tmp_path / "r1.jsonl", **args)
    select_records(pool, "random", "4", tmp_path / "r2.jsonl", **args)
    assert (tmp_path / "r1.jsonl").read_text() == (tmp_path / "r2.jsonl").read_text()


@pytest.mark.parametrize("args, message", [
    (["--strategy", "random", "--budget", "13"], "larger than the pool (12 records)"),
    (["--strategy", "random", "--budget", "0"], "keep at least one record"),
    (["--strategy", "random", "--budget", "0%"], "keep at least one record"),
    (["--strategy", "cherry", "--budget", "3"], "unknown strategy 'cherry'"),
    (["--strategy", "ifd", "--budget", "3", "--model", "/no/such/model"], "model not found"),
])
def test_bad_selection_input_is_one_line_and_writes_nothing(args, message, pool, tmp_path, capsys, tiny_model_dir):
    model = [] if "--model" in args else ["--model", str(tiny_model_dir)]
    assert main(["data", "select", str(pool), *args, *model, "--out", str(tmp_path / "o.jsonl"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("rows", [
    [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": a}]} for i, a in enumerate(ANSWERS)],
    [{"prompt": f"q{i}", "chosen": a, "rejected": "no"} for i, a in enumerate(ANSWERS)],
    [{"text": a} for a in ANSWERS],
], ids=["sharegpt", "preference", "text"])
def test_every_format_can_be_selected_from(rows, tiny_model_dir, tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    summary = select_records(pool, "perplexity", "25%", tmp_path / "out.jsonl", model=str(tiny_model_dir),
                             progress=False)
    kept = selected(tmp_path / "out.jsonl")
    assert summary["kept"] == len(kept) == 3 and all(r in rows for r in kept)  # written as they were
