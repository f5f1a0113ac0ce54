"""Multiple choice by log-likelihood: no generation, each choice is scored as the continuation of the prompt.

A choice's score is the summed log-prob of its tokens after the prompt. As in lm-eval-harness
(`lm_eval/api/task.py`, multiple_choice `process_results`), `acc` picks the choice with the highest
sum and `acc_norm` the highest sum divided by the choice's length in characters (`len(choice)`),
which keeps long choices from losing just for being long, whatever the tokenizer.

The prompt is rendered as generation sees it: chat messages through the chat template with the
generation prompt (the choice is then the assistant's text, with no end-of-turn token), raw strings
as they are. The choice's tokens are split off as lm-eval-harness does (`_encode_pair`): prompt and
choice are tokenized together, and the choice's tokens are those past the prompt's own, which follow
the prompt tokens unchanged in every choice. Tokenizing the choice alone would differ where a
tokenizer marks the start of every text (SentencePiece's "▁" prefix). Whitespace that ends a raw
prompt moves to the front of each choice, so "Answer: " + "Paris" is scored as "Answer:" + " Paris",
the way the model would write it. A chat prompt keeps its template's last newline: lm-eval, with
--apply-chat-template, moves it into every choice, which adds the same log-prob to each (acc is
unchanged, acc_norm can move; docs/evaluation.md).
"""
from __future__ import annotations

from tuna.data.render import IGNORE, Rendered, chat_text
from tuna.data.scoring import labelled_logprobs
from tuna.errors import UserError
from tuna.models.rope import context_window


def continuations(tokenizer, prompt: list[dict] | str, choices: list[str]) -> list[Rendered]:
    """Prompt + choice token ids per choice, with only the choice's tokens labelled."""
    chat = isinstance(prompt, list)
    text = chat_text(tokenizer, prompt, generation_prompt=True) if chat else prompt.rstrip()
    space = "" if chat else prompt[len(text):]
    prompt_ids = tokenizer(text, add_special_tokens=not chat).input_ids
    if not text or not prompt_ids:
        raise UserError("a multiple-choice prompt is empty; a choice needs a prompt to continue")
    items = []
    for choice in choices:
        choice_ids = tokenizer(text + space + choice, add_special_tokens=not chat).input_ids[len(prompt_ids):]
        if not choice_ids:
            raise UserError(f"choice {choice!r} has no tokens to score")
        items.append(Rendered(prompt_ids + choice_ids, [IGNORE] * len(prompt_ids) + choice_ids))
    return items


def choice_logprobs(model, tokenizer, prompts: list[list[dict] | str], choices: list[list[str]], *,
                    batch_size: int = 8, progress: bool = False) -> list[list[tuple[float, int]]]:
    """Per record, per choice: (summed log-prob of the choice's tokens after the prompt, number of those tokens)."""
    if len(prompts) != len(choices):
        raise ValueError(f"{len(prompts)} prompts but {len(choices)} lists of choices")
    keys, items = [], []
    for r, (prompt, options) in enumerate(zip(prompts, choices)):
        for c, item in enumerate(continuations(tokenizer, prompt, options)):
            keys.append((r, c))
            items.append(item)
    window = context_window(model)
    over = next((i for i, item in enumerate(items) if len(item.input_ids) > window), None)
    if over is not None:
        r, c = keys[over]
        raise UserError(f"record {r + 1}, choice {c + 1}: prompt and choice are {len(items[over].input_ids)} tokens, "
                        f"beyond the model's context window of {window}")
    scores = labelled_logprobs(model, items, batch_size=batch_size, pad_id=tokenizer.pad_token_id, progress=progress,
                               desc="score choices")
    results: list[list] = [[None] * len(options) for options in choices]
    for (r, c), value in zip(keys, scores):
        results[r][c] = value
    return results


def ranking(choices: list[str], scores: list[tuple[float, int]], gold: int | None) -> dict:
    """The picks by summed log-prob (`predicted`) and by log-prob per character (`predicted_norm`); ties go
    to the earlier choice."""
    sums = [total for total, _ in scores]
    per_char = [total / len(choice) for total, choice in zip(sums, choices)]
    return {"predicted": _argmax(sums), "predicted_norm": _argmax(per_char), "gold": gold, "logprobs": sums,
            "tokens": [count for _, count in scores]}


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def rank_choices(model, tokenizer, items: list, *, batch_size: int = 8, progress: bool = False) -> list[dict]:
    """One `ranking` per task item (`eval.task.TaskItem`); every item carries `choices` (see `check_supported`)."""
    scores = choice_logprobs(model, tokenizer, [item.prompt for item in items],
                             [item.reference["choices"] for item in items], batch_size=batch_size, progress=progress)
    return [ranking(item.reference["choices"], s, item.reference.get("answer")) for item, s in zip(items, scores)]
