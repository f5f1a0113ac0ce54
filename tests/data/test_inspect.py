"""`tuna data inspect` marks exactly the tokens training trains, says whether the final EOS is trained,
finds the defects, and under a packed recipe shows the row the loss sees."""
from __future__ import annotations

import pytest

from tests.conftest import write_jsonl
from tuna.cli import main
from tuna.config import DataConfig
from tuna.data.inspect import inspect_records
from tuna.data.read import read_records

RECORDS = {
    "messages": {"messages": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "2 + 2?"}, {"from": "gpt", "value": "4"}]},
    "trl_conversational": {"prompt": [{"role": "user", "content": "2 + 2?"}], "completion": [{"role": "assistant", "content": "4"}]},
    "instruction": {"instruction": "2 + 2?", "output": "4"},
    "prompt_completion": {"prompt": "2 + 2 =", "completion": " 4"},
    "text": {"text": "two and two"},
}
TRAINED = {"messages": "4<|im_end|>", "sharegpt": "4<|im_end|>", "trl_conversational": "4<|im_end|>",
           "instruction": "4<|im_end|>", "prompt_completion": " 4<|im_end|>", "text": "two and two<|im_end|>"}


@pytest.mark.parametrize("fmt", RECORDS)
def test_the_trained_tokens_are_exactly_the_answer_and_its_eos(fmt, tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [RECORDS[fmt]])
    found = inspect_records(read_records(path), str(path), DataConfig(), tiny_tokenizer, count=1)
    (example,) = found.examples
    assert "".join(t.text for t in example.tokens if t.trained) == TRAINED[fmt]
    assert example.final_eos("<|im_end|>") == "the final <|im_end|> is trained"
    untrained = DataConfig(train_on="completion")
    assert inspect_records(read_records(path), str(path), untrained, tiny_tokenizer).examples[0].tokens[0].special \
        == (fmt not in ("prompt_completion", "text"))  # chat starts with the template's BOS, shown as special


def test_defects_and_lengths_are_counted(tmp_path, tiny_tokenizer):
    rows = [RECORDS["instruction"], {"instruction": "blank?", "output": "   "}, RECORDS["instruction"],
            {"instruction": "x " * 60, "output": "long"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    lengths = inspect_records(read_records(path), str(path), DataConfig(), tiny_tokenizer).lengths
    limit = sorted(lengths)[-2]  # only the long record is over it
    found = inspect_records(read_records(path), str(path), DataConfig(max_tokens=limit), tiny_tokenizer)
    assert found.empty == [f"{path}, line 2"] and found.duplicates == [(f"{path}, line 3", f"{path}, line 1")]
    assert found.over_limit == 1 and found.lengths == lengths and lengths[3] > limit
    assert found.no_target == []  # a blank answer still trains its end of turn


def test_a_packed_recipe_shows_the_row_the_loss_sees(tmp_path, tiny_model_dir, chat_data, capsys):
    import yaml

    from tuna.config import load_recipe
    from tuna.data.batch import TrainBatches
    from tuna.data.dataset import load_splits
    from tuna.models.load import load_tokenizer
    from tuna.models.forward import IGNORE

    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump({"model": str(tiny_model_dir), "data": {"path": str(chat_data), "eval_split": 0,
                                                                              "batching": "packed", "max_tokens": 96},
                                      "train": {"micro_batch_size": 2, "seed": 5}}))
    assert main(["data", "inspect", "--config", str(config), "--examples", "1", "--no-color",
                 "--html", str(tmp_path / "inspect.html")]) == 0
    out = capsys.readouterr().out
    assert "first training micro-batch, row 1 (packed)" in out and "«" in out
    recipe = load_recipe(config)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    found = inspect_records(read_records(chat_data), str(chat_data), recipe.data, tokenizer, count=0, recipe=recipe)
    splits = load_splits(recipe.data, tokenizer, recipe.train.seed)
    batch = TrainBatches(splits.train, splits.kind, batching="packed", batch_size=2, max_tokens=96,
                         weighting=recipe.train.loss_weighting, pad_id=tokenizer.pad_token_id, seed=5).next()
    (row,) = found.examples
    assert [t.trained for t in row.tokens] == [label != IGNORE for label in batch["labels"][0].tolist()]
    assert sum(not t.trained and t.text == "<|im_start|>" for t in row.tokens) >= 2  # two examples, borders untrained
    from tests.report.browser import check_page

    check_page(tmp_path / "inspect.html", selectors=("table", "figure svg", ".tokens span.trained", ".tokens span.special"))
