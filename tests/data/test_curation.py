"""Deduplication and decontamination on planted sets: what was planted is found, nothing else is."""
from __future__ import annotations

import json
import random

import pytest

from tests.conftest import write_jsonl
from tuna.cli import main

VOCABULARY = [f"w{i}" for i in range(300)]


def sentence(rng: random.Random, words: int = 40) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(words))


@pytest.fixture
def planted(tmp_path):
    """100 distinct records, then 40 near duplicates (one word swapped, case and spacing changed) and 5 exact ones."""
    rng = random.Random(0)
    distinct = [{"instruction": "repeat", "output": sentence(rng)} for _ in range(100)]
    near = []
    for i in range(40):
        words = distinct[i]["output"].split()
        words[rng.randrange(len(words))] = rng.choice(VOCABULARY)
        near.append({"instruction": "Repeat", "output": "  ".join(words).upper()})
    exact = [dict(distinct[50 + i]) for i in range(5)]
    rows = distinct + near + exact
    return write_jsonl(tmp_path / "pool.jsonl", rows), len(distinct)


def test_dedup_finds_the_planted_near_duplicates_and_no_distinct_record(planted, tmp_path, capsys):
    pytest.importorskip("datasketch")
    path, distinct = planted
    assert main(["data", "dedup", str(path), "--out", str(tmp_path / "clean.jsonl")]) == 0
    assert "5 exact and" in capsys.readouterr().out
    kept = [json.loads(line) for line in (tmp_path / "clean.jsonl").read_text().splitlines()]
    removed = [json.loads(line) for line in (tmp_path / "clean.removed.jsonl").read_text().splitlines()]
    lines = {int(r["origin"].rsplit(" ", 1)[1]) for r in removed}
    assert not lines & set(range(1, distinct + 1)) and len(kept) + len(removed) == distinct + 45  # no false positive
    assert len(lines & set(range(101, 141))) >= 38  # ≥ 95% of the 40 near duplicates
    assert lines >= set(range(141, 146)) and all(r["kind"] == "exact" for r in removed
                                                  if int(r["origin"].rsplit(" ", 1)[1]) > 140)
    for r in removed:  # each names the record it duplicates
        line = int(r["origin"].rsplit(" ", 1)[1])
        assert r["duplicate_of"].endswith(f"line {line - 100 if line <= 140 else line - 90}")


def test_exact_only_dedup_needs_no_minhash(planted, tmp_path):
    path, distinct = planted
    assert main(["data", "dedup", str(path), "--out", str(tmp_path / "clean.jsonl"), "--near", "1"]) == 0
    assert len((tmp_path / "clean.jsonl").read_text().splitlines()) == distinct + 40


def test_decontamination_finds_a_13_gram_and_ignores_a_12_gram(tmp_path, capsys):
    rng = random.Random(1)
    question = sentence(rng, 30).split()
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"messages": [{"role": "user", "content": " ".join(question)},
                                                                {"role": "assistant", "content": "ok"}]}])
    leak13 = {"text": "intro " + " ".join(question[5:18]) + " outro"}
    leak12 = {"text": "intro " + " ".join(question[5:17]) + " outro"}
    clean = {"text": sentence(rng, 30)}
    train = write_jsonl(tmp_path / "train.jsonl", [clean, leak13, leak12])
    assert main(["data", "decontaminate", str(train), "--against", str(evals), "--out", str(tmp_path / "out.jsonl")]) == 0
    assert "1 share a 13-word sequence" in capsys.readouterr().out
    kept = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert kept == [clean, leak12]
    (dropped,) = [json.loads(line) for line in (tmp_path / "out.removed.jsonl").read_text().splitlines()]
    assert dropped["origin"].endswith("line 2") and dropped["overlaps"].endswith("eval.jsonl, line 1")
    assert dropped["ngram"] == " ".join(question[5:18])


def test_bad_curation_input_is_one_line(tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a b c"}])
    (tmp_path / "empty.jsonl").write_text("")
    cases = [(["data", "decontaminate", str(train), "--against", str(tmp_path / "empty.jsonl")], "is empty"),
             (["data", "dedup", str(train), "--near", "0"], "--near must be a similarity in (0, 1]"),
             (["data", "dedup", str(tmp_path / "nope.jsonl")], "data file not found")]
    for args, message in cases:
        assert main([*args, "--out", str(tmp_path / "o.jsonl")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0
        assert not (tmp_path / "o.jsonl").exists()
