"""The shapes other tools write: ShareGPT conversations, TRL's conversational prompt/completion, renamed
columns; each trains, masks what its tool masks, and converts both ways without losing a trained turn."""
from __future__ import annotations

import json

import pytest

from tests.conftest import write_jsonl
from tuna.cli import main
from tuna.data.formats import detect_format, to_example
from tuna.data.read import read_records
from tuna.data.render import render_example
from tuna.errors import UserError
from tuna.models.forward import IGNORE

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "what is 2 + 2?"},
        {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3 + 3?"},
        {"role": "assistant", "content": "6"}]
SHAREGPT = {"conversations": [{"from": {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]],
                               "value": m["content"]} for m in CHAT], "id": 7}
TRL = {"prompt": CHAT[:4], "completion": CHAT[4:]}


def rendered(tmp_path, record: dict, tokenizer, name: str = "data.jsonl", columns=None):
    records = read_records(write_jsonl(tmp_path / name, [record]), columns)
    return render_example(to_example(records[0], detect_format(records), 0), tokenizer)


def trained_text(item, tokenizer) -> str:
    return tokenizer.decode([t for t, label in zip(item.input_ids, item.labels) if label != IGNORE])


def test_sharegpt_reads_as_the_same_conversation(tmp_path, tiny_tokenizer):
    ours, theirs = rendered(tmp_path, {"messages": CHAT}, tiny_tokenizer), rendered(tmp_path, SHAREGPT, tiny_tokenizer, "s.jsonl")
    assert (ours.input_ids, ours.labels) == (theirs.input_ids, theirs.labels)
    assert trained_text(ours, tiny_tokenizer).count("<|im_end|>") == 2  # both replies, each with its end of turn


def test_trl_conversational_prompt_completion_trains_only_the_completion(tmp_path, tiny_tokenizer):
    whole = rendered(tmp_path, {"messages": CHAT}, tiny_tokenizer)
    completion_only = rendered(tmp_path, TRL, tiny_tokenizer, "trl.jsonl")
    assert completion_only.input_ids == whole.input_ids
    assert trained_text(completion_only, tiny_tokenizer).replace(" ", "") == "6<|im_end|>"
    assert sum(l != IGNORE for l in completion_only.labels) < sum(l != IGNORE for l in whole.labels)


def test_columns_map_a_files_own_names(tmp_path, tiny_tokenizer):
    item = rendered(tmp_path, {"dialogue": CHAT}, tiny_tokenizer, columns={"messages": "dialogue"})
    assert (item.input_ids, item.labels) == (lambda r: (r.input_ids, r.labels))(rendered(tmp_path, {"messages": CHAT}, tiny_tokenizer, "m.jsonl"))
    with pytest.raises(UserError, match="'mesages' is not a record key"):
        read_records(tmp_path / "data.jsonl", {"mesages": "dialogue"})


@pytest.mark.parametrize("record", [
    {"messages": CHAT}, SHAREGPT, TRL, {"instruction": "add", "input": "2 2", "output": "4"},
    {"prompt": "2 + 2 =", "completion": " 4"}, {"text": "two and two make four"},
    {"question": "2 + 2?", "reply": "4", "columns": {"instruction": "question", "output": "reply"}},
], ids=["messages", "sharegpt", "trl_conversational", "instruction", "prompt_completion", "text", "columns"])
def test_every_format_trains_two_steps(record, tmp_path, tiny_model_dir):
    from tuna.config import validate_recipe
    from tuna.train.loop import train

    record = dict(record)
    columns = record.pop("columns", None)
    data = write_jsonl(tmp_path / "data.jsonl", [record] * 8)
    recipe = validate_recipe({"model": str(tiny_model_dir), "data": {"path": str(data), "eval_split": 0, "columns": columns},
                              "train": {"max_steps": 2, "micro_batch_size": 2, "device": "cpu", "precision": "fp32"},
                              "output_dir": str(tmp_path / "run")})
    result = train(recipe, progress=False)
    assert result.steps == 2 and result.train_loss > 0


@pytest.mark.parametrize("source", [{"messages": CHAT}, SHAREGPT, {"messages": CHAT[:3]},
                                    {"instruction": "add", "output": "4"}])
def test_convert_round_trips_through_prompt_completion(source, tmp_path, tiny_tokenizer, capsys):
    write_jsonl(tmp_path / "in.jsonl", [source])
    assert main(["data", "convert", str(tmp_path / "in.jsonl"), "--to", "prompt_completion",
                 "--out", str(tmp_path / "pc.jsonl")]) == 0
    assert "1 records written" in capsys.readouterr().out
    pc = json.loads((tmp_path / "pc.jsonl").read_text())
    assert pc["completion"][-1]["role"] == "assistant" and pc["prompt"][-1]["role"] != "assistant"
    assert main(["data", "convert", str(tmp_path / "pc.jsonl"), "--to", "messages", "--out", str(tmp_path / "m.jsonl")]) == 0
    back = json.loads((tmp_path / "m.jsonl").read_text())
    assert back["messages"] == pc["prompt"] + pc["completion"]
    # what trains after the round trip is what TRL trains: the last reply
    assert trained_text(rendered(tmp_path, back, tiny_tokenizer, "back.jsonl"), tiny_tokenizer) == \
        trained_text(rendered(tmp_path, pc, tiny_tokenizer, "pc2.jsonl"), tiny_tokenizer)
    if source.get("id") is not None:
        assert back["id"] == source["id"]  # keys outside the format travel along


def test_convert_refuses_what_has_no_turns(tmp_path, capsys):
    write_jsonl(tmp_path / "text.jsonl", [{"text": "just text"}])
    assert main(["data", "convert", str(tmp_path / "text.jsonl"), "--to", "messages", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "text records have no prompt and answer turns" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
    write_jsonl(tmp_path / "bad.jsonl", [{"conversations": [{"from": "alien", "value": "hi"}]}])
    assert main(["data", "convert", str(tmp_path / "bad.jsonl"), "--to", "messages", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "unknown ShareGPT speaker 'alien'" in capsys.readouterr().err
