"""Generation-based scoring of a data file: answer every record's prompt, score the answers by metric.

Records are LongBench's (`input`, `context`, `answers`, optional `all_classes`; the prompt is the
context, a blank line, then the input) or tuna's own formats: `prompt`/`completion` (raw text, as in
training), `instruction`/`output` or `messages` (the last assistant turn is the gold answer, the
turns before it the prompt). A record's own `answers` list overrides the gold its format implies.
Everything that can be wrong with the data is checked before the model is even loaded.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tuna.data.formats import detect_format, to_example
from tuna.data.render import chat_text
from tuna.errors import UserError
from tuna.eval.scorers import Metric

LONGBENCH_KEYS = ("input", "context")


@dataclass
class TaskItem:
    id: str | int
    prompt: list[dict] | str  # chat messages (templated) or raw text
    reference: dict  # fields metrics read: answers, all_classes


def read_task(records: list[dict]) -> list[TaskItem]:
    if not records:
        raise UserError("the dataset is empty")
    longbench = all(k in records[0] for k in LONGBENCH_KEYS) and "instruction" not in records[0]
    fmt = "longbench" if longbench else detect_format(records)
    if fmt == "text":
        raise UserError("`text` records have no prompt to answer; use prompt/completion, messages or LongBench records")
    return [_item(record, fmt, index) for index, record in enumerate(records)]


def _item(record: dict, fmt: str, index: int) -> TaskItem:
    if fmt == "longbench":
        parts = [str(record[k]) for k in ("context", "input") if record[k]]
        prompt, answers = [{"role": "user", "content": "\n\n".join(parts)}], []
    else:
        example = to_example(record, fmt, index)
        if example.messages is None:
            prompt, answers = example.prompt, [example.completion]
        else:
            last = max((i for i, m in enumerate(example.messages) if m["role"] == "assistant"), default=None)
            if last is None:
                prompt, answers = example.messages, []
            else:
                prompt, answers = example.messages[:last], [example.messages[last]["content"]]
    if "answers" in record:
        answers = record["answers"] if isinstance(record["answers"], list) else [record["answers"]]
    reference = {"answers": answers}
    if record.get("all_classes") is not None:
        reference["all_classes"] = record["all_classes"]
    for key, values in reference.items():
        if not all(isinstance(v, str) for v in values):
            raise UserError(f"record {index + 1}: `{key}` must be a list of strings")
    return TaskItem(record.get("_id", record.get("id", index)), prompt, reference)


def check_supported(items: list[TaskItem], metrics: list[Metric]) -> None:
    """Every record must carry every field each metric reads (non-empty)."""
    for metric in metrics:
        for field in metric.needs:
            missing = next((i for i, item in enumerate(items) if not item.reference.get(field)), None)
            if missing is not None:
                what = "gold answers (`answers`, a completion or a final assistant turn)" if field == "answers" else f"`{field}`"
                raise UserError(f"metric {metric.name} needs {what} in every record; record {missing + 1} has none")


def context_window(model) -> int:
    """The positions a model is meant for. `max_position_embeddings` already counts linear and YaRN scaling
    as `model.rope_scaling` writes it; dynamic NTK keeps the original there and stretches it by its factor;
    hub YaRN configs that name their original window are stretched from that."""
    config = model.config
    window = config.max_position_embeddings
    rope = getattr(config, "rope_parameters", None) or {}
    factor = rope.get("factor")
    if factor and rope.get("rope_type") == "dynamic":
        return round(window * factor)
    if factor and rope.get("original_max_position_embeddings"):
        return max(window, round(rope["original_max_position_embeddings"] * factor))
    return window


def prompt_lengths(tokenizer, items: list[TaskItem]) -> list[int]:
    texts = [chat_text(tokenizer, item.prompt, generation_prompt=True) if isinstance(item.prompt, list) else item.prompt
             for item in items]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False).input_ids]


def evaluate_task(model, tokenizer, items: list[TaskItem], metrics: list[Metric], *, max_new_tokens: int,
                  batch_size: int, progress: bool = True) -> tuple[dict, list[dict]]:
    """(summary, one row per record). Prompts are generated in length order so batches pad little."""
    from tuna.eval.generate import generate

    lengths = prompt_lengths(tokenizer, items)
    window = context_window(model)
    over = [i for i, n in enumerate(lengths) if n + max_new_tokens > window]
    if over:
        raise UserError(f"{len(over)} record(s) (first: record {over[0] + 1}, {lengths[over[0]]} tokens) do not fit the "
                        f"model's context window of {window} tokens with --max-new-tokens {max_new_tokens}; "
                        "shorten them or extend the window with model.rope_scaling")
    order = sorted(range(len(items)), key=lengths.__getitem__)
    outputs = generate(model, tokenizer, [items[i].prompt for i in order], max_new_tokens=max_new_tokens,
                       batch_size=batch_size, progress=progress)
    predictions = [""] * len(items)
    for i, text in zip(order, outputs):
        predictions[i] = text.strip()
    rows = [{"id": item.id, "prediction": prediction, "gold": item.reference["answers"],
             "scores": {m.name: m.score(prediction, item.reference) for m in metrics}}
            for item, prediction in zip(items, predictions)]
    means = {m.name: sum(r["scores"][m.name] for r in rows) / len(rows) for m in metrics}
    return {"metrics": means, "count": len(rows)}, rows


def write_task_results(out_dir: str | Path, summary: dict, rows: list[dict]) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scores.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out
