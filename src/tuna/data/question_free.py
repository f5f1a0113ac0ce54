"""QFFT, Question-Free Fine-Tuning ("QFFT, Question-Free Fine-Tuning for Adaptive Reasoning"): the training
examples lose their question and the model learns from the responses alone.

A chat example keeps its system turns and its assistant turns, in order, with the user (and tool)
turns removed; a prompt/completion pair keeps its completion with an empty prompt. The loss stays on
the responses. Only the training split changes: the held-out split keeps its questions, so the eval
loss measures the task as it will be asked.
"""
from __future__ import annotations

from tuna.data.formats import detect_format, to_example
from tuna.errors import UserError


def without_questions(records: list[dict], fmt: str) -> list[dict]:
    """The records, each with its question removed, in `messages` or `prompt_completion` format."""
    fmt = detect_format(records) if fmt == "auto" else fmt
    if fmt not in ("messages", "instruction", "prompt_completion"):
        raise UserError(f"data.drop_question needs records with a question and a response (messages, instruction "
                        f"or prompt_completion), not {fmt!r}")
    kept = []
    for index, record in enumerate(records):
        example = to_example(record, fmt, index)
        if example.messages is None:
            kept.append({"prompt": "", "completion": example.completion})
            continue
        turns = [m for m in example.messages if m["role"] in ("system", "assistant")]
        if not any(m["role"] == "assistant" for m in turns):
            raise UserError(f"record {index + 1}: no response to keep once the question is dropped")
        kept.append({"messages": turns})
    return kept
