"""Prompts for objectives that generate their own completions (GRPO).

A record's prompt is what training would feed the model before the answer: a chat conversation
without its final assistant turn, rendered with the generation prompt; the raw `prompt` of a
prompt/completion pair, as SFT renders it; or, for records with a `prompt` and no completion (the
usual RL data), that prompt as one user message through the chat template.
The whole record travels with it, so reward functions can read its `answer`, `schema`, ... .
"""
from __future__ import annotations

from dataclasses import dataclass

from tuna.data.formats import detect_format, to_example
from tuna.data.render import RenderStats, chat_text
from tuna.errors import UserError


@dataclass
class PromptItem:
    input_ids: list[int]
    record: dict
    index: int


def prompt_of(example) -> list[dict] | str:
    if example.messages is None:
        return example.prompt
    turns = list(example.messages)
    while turns and turns[-1]["role"] == "assistant":
        turns.pop()
    if not turns:
        raise UserError("a conversation has no turn before its answer to use as a prompt")
    return turns


def render_prompts(records: list[dict], fmt: str, tokenizer, *, max_tokens: int) -> tuple[list[PromptItem], RenderStats]:
    """Token ids of each prompt; prompts over `max_tokens` are dropped and counted (never cut)."""
    if fmt == "auto" and "prompt" in records[0] and "completion" not in records[0]:
        fmt = "prompt_only"
    fmt = detect_format(records) if fmt == "auto" else fmt
    if fmt == "text":
        raise UserError("`text` records have no prompt to generate from; use messages, instruction or prompt_completion")
    items, stats = [], RenderStats()
    for index, record in enumerate(records):
        if fmt == "prompt_only":
            if not isinstance(record.get("prompt"), str):
                raise UserError(f"record {index + 1}: needs a `prompt` string")
            prompt = [{"role": "user", "content": record["prompt"]}]
        else:
            prompt = prompt_of(to_example(record, fmt, index))
        if isinstance(prompt, list):
            ids = tokenizer(chat_text(tokenizer, prompt, generation_prompt=True), add_special_tokens=False).input_ids
        else:
            ids = tokenizer(prompt).input_ids
        if len(ids) > max_tokens:
            stats.dropped_overlong += 1
            continue
        items.append(PromptItem(ids, record, index))
    stats.kept = len(items)
    if not items:
        raise UserError(f"no prompt fits data.max_tokens ({stats.summary()})")
    return items, stats


def collate_prompts(items: list[PromptItem]) -> dict:
    """Prompts stay token lists (they are left-padded at sampling time) with their records."""
    return {"prompt_ids": [item.input_ids for item in items], "examples": [item.record for item in items],
            "indices": [item.index for item in items]}
