"""Scoring of a data file by metric: answer every record's prompt (or rank its choices), score by metric.

Records are LongBench's (`input`, `context`, `answers`, optional `all_classes`; the prompt is the
context, a blank line, then the input) or tuna's own formats: `prompt` [+ `completion`] (raw text, as
in training), `instruction` [+ `input`, `output`] or `messages` (the last assistant turn is the gold
answer, the turns before it the prompt). The answer side is optional: metrics that need no gold
(`json_valid`) or read other fields (`choices`) score prompts alone. A record's own `answers` list
overrides the gold its format implies; `choices` (strings) with `answer` (the gold choice's index or
text) make it a multiple-choice item. Everything that can be wrong with the data is checked before
the model is even loaded.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tuna.data.formats import ANSWER_KEY, prompt_format, to_example, with_answer
from tuna.data.render import chat_text
from tuna.errors import UserError
from tuna.eval.choices import rank_choices
from tuna.eval.generate import generate
from tuna.eval.scorers import Metric, get_metrics
from tuna.models.rope import context_window

LONGBENCH_KEYS = ("input", "context")


@dataclass
class TaskItem:
    id: str | int
    prompt: list[dict] | str  # chat messages (templated) or raw text
    reference: dict  # fields metrics read: answers, all_classes, choices, answer (the gold choice's index)


def read_task(records: list[dict]) -> list[TaskItem]:
    if not records:
        raise UserError("the dataset is empty")
    fmt = _format(records[0])
    return [_item(record, fmt, index) for index, record in enumerate(records)]


def _format(first: dict) -> str:
    if all(k in first for k in LONGBENCH_KEYS) and "instruction" not in first:
        return "longbench"
    fmt = prompt_format(first)
    if fmt is None and "text" in first:
        raise UserError("`text` records have no prompt to answer; use prompt/completion, messages or LongBench records")
    if fmt is None:
        raise UserError(f"cannot find a prompt among the keys {sorted(first)}; give LongBench `input` and `context`, "
                        "`messages`, `instruction` or `prompt`")
    return fmt


def _item(record: dict, fmt: str, index: int) -> TaskItem:
    if fmt == "longbench":
        parts = [str(record[k]) for k in ("context", "input") if record[k]]
        prompt, answers = [{"role": "user", "content": "\n\n".join(parts)}], []
    else:
        has_gold = fmt == "messages" or ANSWER_KEY[fmt] in record
        example = to_example(record if has_gold else with_answer(record, fmt, ""), fmt, index)
        if example.messages is None:
            prompt, answers = example.prompt, [example.completion]
        else:
            last = max((i for i, m in enumerate(example.messages) if m["role"] == "assistant"), default=None)
            if last is None:
                prompt, answers = example.messages, []
            else:
                prompt, answers = example.messages[:last], [example.messages[last]["content"]]
        answers = answers if has_gold else []
    if "answers" in record:
        answers = record["answers"] if isinstance(record["answers"], list) else [record["answers"]]
    reference = {"answers": answers}
    if record.get("all_classes") is not None:
        reference["all_classes"] = record["all_classes"]
    for key, values in reference.items():
        if not all(isinstance(v, str) for v in values):
            raise UserError(f"record {index + 1}: `{key}` must be a list of strings")
    if "choices" in record:
        reference.update(_choices(record, index))
    return TaskItem(record.get("_id", record.get("id", index)), prompt, reference)


def _choices(record: dict, index: int) -> dict:
    """`choices`, and `answer` as the gold choice's index when the record gives one."""
    choices = record["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise UserError(f"record {index + 1}: `choices` must be a list of at least two non-empty strings")
    if "answer" not in record:
        return {"choices": choices}
    gold = record["answer"]
    if isinstance(gold, str) and gold in choices:
        return {"choices": choices, "answer": choices.index(gold)}
    if isinstance(gold, int) and not isinstance(gold, bool) and 0 <= gold < len(choices):
        return {"choices": choices, "answer": gold}
    raise UserError(f"record {index + 1}: `answer` must be the gold choice's index (0 to {len(choices) - 1}) or its "
                    f"text; got {gold!r}")


FIELD_NAMES = {"answers": "gold answers (`answers`, a completion or a final assistant turn)",
               "answer": "`answer` (the gold choice's index or text)"}


def check_supported(items: list[TaskItem], metrics: list[Metric]) -> None:
    """Every record must carry every field each metric reads (non-empty)."""
    for metric in metrics:
        for field in metric.needs:
            missing = next((i for i, item in enumerate(items) if item.reference.get(field) in (None, [])), None)
            if missing is not None:
                what = FIELD_NAMES.get(field, f"`{field}`")
                raise UserError(f"metric {metric.name} needs {what} in every record; record {missing + 1} has none")


def prompt_lengths(tokenizer, items: list[TaskItem]) -> list[int]:
    texts = [chat_text(tokenizer, item.prompt, generation_prompt=True) if isinstance(item.prompt, list) else item.prompt
             for item in items]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False).input_ids]


def evaluate_task(model, tokenizer, items: list[TaskItem], metrics: list[Metric], *, max_new_tokens: int,
                  batch_size: int, progress: bool = True, generation: dict | None = None) -> tuple[dict, list[dict]]:
    """(summary, one row per record). Answers are generated only for `generate` metrics (with `generation`:
    the options of `tuna.eval.generate.generate`), choices are ranked only for `choice` metrics."""
    generating = [m for m in metrics if m.kind == "generate"]
    if generating:
        lengths = prompt_lengths(tokenizer, items)
        check_window(model, lengths, max_new_tokens)
    outputs = {}
    if any(m.kind == "choice" for m in metrics):
        outputs["choice"] = rank_choices(model, tokenizer, items, batch_size=batch_size, progress=progress)
    if generating:
        outputs["generate"] = generate_answers(model, tokenizer, items, lengths, max_new_tokens=max_new_tokens,
                                               batch_size=batch_size, progress=progress, **(generation or {}))
    rows = []
    for i, item in enumerate(items):
        row = {"id": item.id}
        if generating:
            row.update(prediction=outputs["generate"][i], gold=item.reference["answers"])
        if "choice" in outputs:
            row["choice"] = outputs["choice"][i]
        rows.append({**row, "scores": {m.name: m.score(outputs[m.kind][i], item.reference) for m in metrics}})
    means = {m.name: sum(r["scores"][m.name] for r in rows) / len(rows) for m in metrics}
    for m in generating:
        if m.corpus is not None:
            means[f"corpus_{m.name}"] = m.corpus(outputs["generate"], [item.reference for item in items])
    return {"metrics": means, "count": len(rows)}, rows


def check_window(model, lengths: list[int], max_new_tokens: int) -> None:
    """Prompts are never cut: one that leaves no room for the answer is an error naming it."""
    window = context_window(model)
    over = [i for i, n in enumerate(lengths) if n + max_new_tokens > window]
    if over:
        raise UserError(f"{len(over)} record(s) (first: record {over[0] + 1}, {lengths[over[0]]} tokens) do not fit the "
                        f"model's context window of {window} tokens with --max-new-tokens {max_new_tokens}; "
                        "shorten them or extend the window with model.rope_scaling")


def generate_answers(model, tokenizer, items: list[TaskItem], lengths: list[int], *, max_new_tokens: int,
                     batch_size: int, progress: bool, **options) -> list[str]:
    """Each record's generated answer, stripped. Prompts are generated in length order so batches pad little."""
    order = sorted(range(len(items)), key=lengths.__getitem__)
    outputs = generate(model, tokenizer, [items[i].prompt for i in order], max_new_tokens=max_new_tokens,
                       batch_size=batch_size, progress=progress, **options)
    predictions = [""] * len(items)
    for i, text in zip(order, outputs):
        predictions[i] = text.strip()
    return predictions


def write_task_results(out_dir: str | Path, summary: dict, rows: list[dict]) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scores.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def multiple_choice_accuracy(model, tokenizer, records: list[dict], *, batch_size: int = 8,
                             progress: bool = False) -> dict:
    """acc and acc_norm over records with `choices` and `answer` (any prompt format `tuna eval` reads),
    and one row per record: its id, the picks, the gold index, each choice's log-prob and token count."""
    items = read_task(records)
    check_supported(items, get_metrics(["mc_accuracy"]))
    rankings = rank_choices(model, tokenizer, items, batch_size=batch_size, progress=progress)
    rows = [{"id": item.id, **r} for item, r in zip(items, rankings)]
    return {"acc": sum(r["predicted"] == r["gold"] for r in rows) / len(rows),
            "acc_norm": sum(r["predicted_norm"] == r["gold"] for r in rows) / len(rows),
            "count": len(rows), "rows": rows}
