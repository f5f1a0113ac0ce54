"""GRAPE response selection: of several candidate responses per instruction, keep the one that fits the model.

"The Best Instruction-Tuning Data are Those That Fit": a response the target model already finds
probable teaches the task with less distribution shift than one it finds surprising. Each candidate
is rendered exactly as SFT would train on it (chat template, answer tokens, end of turn), and it is
scored by its length-normalised log-likelihood: the mean log-prob of its answer tokens. The highest
score wins. Normalising by length keeps short answers from winning just because they are short.

Input records hold the prompt side in any SFT format (`messages`, `instruction` [+ `input`],
`prompt`) and the candidates as a list of strings (default field `responses`). The output is the
same record, ready to train on, with the winner as its answer and every candidate's score kept in
`candidate_scores`.
"""
from __future__ import annotations

from tuna.data.formats import prompt_format, to_example, with_answer
from tuna.data.render import Rendered, render_example
from tuna.errors import UserError
from tuna.data.scoring import labelled_logprobs


def split_record(record: dict, field: str, index: int) -> tuple[dict, str, list[str]]:
    """(the record without its candidates, its SFT format, the candidates)."""
    fmt = prompt_format(record)
    if fmt is None:
        raise UserError(f"record {index + 1}: no prompt found; give `messages`, `instruction` or `prompt`")
    candidates = record.get(field)
    if not isinstance(candidates, list) or not candidates or not all(isinstance(c, str) for c in candidates):
        raise UserError(f"record {index + 1}: `{field}` must be a non-empty list of candidate responses (strings)")
    return {k: v for k, v in record.items() if k != field}, fmt, candidates


def render_candidates(splits: list[tuple[dict, str, list[str]]], tokenizer,
                      max_tokens: int) -> tuple[list, list[Rendered], int]:
    """(record index, candidate index) keys, the rendered candidates, and how many were cut at `max_tokens`."""
    keys, items, truncated = [], [], 0
    for index, (prompt_side, fmt, candidates) in enumerate(splits):
        for choice, response in enumerate(candidates):
            item = render_example(to_example(with_answer(prompt_side, fmt, response), fmt, index), tokenizer)
            if len(item.input_ids) > max_tokens:
                item, truncated = Rendered(item.input_ids[:max_tokens], item.labels[:max_tokens]), truncated + 1
            if item.target_count == 0:
                raise UserError(f"record {index + 1}, candidate {choice + 1}: no response token fits in "
                                f"{max_tokens} tokens; raise --max-tokens")
            keys.append((index, choice))
            items.append(item)
    return keys, items, truncated


def select_responses(model, tokenizer, records: list[dict], *, field: str = "responses", max_tokens: int = 2048,
                     batch_size: int = 8, progress: bool = True) -> tuple[list[dict], dict]:
    """The records with their most probable candidate as the answer, and a summary of the choices."""
    if not records:
        raise UserError("the input has no records")
    splits = [split_record(record, field, index) for index, record in enumerate(records)]
    keys, items, truncated = render_candidates(splits, tokenizer, max_tokens)
    scores = [total / count for total, count in labelled_logprobs(model, items, batch_size=batch_size,
                                                                  pad_id=tokenizer.pad_token_id, progress=progress,
                                                                  desc="score candidates")]
    per_record: list[list[float]] = [[] for _ in records]
    for (index, _), value in zip(keys, scores):
        per_record[index].append(value)
    selected, picks = [], {}
    for index, (prompt_side, fmt, candidates) in enumerate(splits):
        best = max(range(len(per_record[index])), key=per_record[index].__getitem__)
        picks[best] = picks.get(best, 0) + 1
        chosen = with_answer(prompt_side, fmt, candidates[best])
        selected.append({**chosen, "candidate_scores": [round(v, 6) for v in per_record[index]]})
    summary = {"records": len(records), "candidates": len(items), "truncated": truncated,
               "picked_position": {str(k + 1): v for k, v in sorted(picks.items())}}
    return selected, summary
