"""Recognise a record's format and turn it into the one shape rendering needs.

Chat-shaped formats (`messages`, `instruction`) become a list of `{role, content}` messages and are
rendered through the model's chat template. Two shapes other tools write are read as `messages` when the
records are read (`canonical`): ShareGPT's `conversations` of `{from, value}`, and TRL's conversational
prompt/completion (`prompt` and `completion` as message lists), whose prompt turns are never trained
(`prompt_turns` counts them). `prompt_completion` and `text` stay raw text, following
TRL's convention: a prompt/completion pair is concatenated as given (plus EOS), untemplated.
`preference` records (a prompt with a chosen and a rejected answer) become a `PreferenceExample` of
chat turns; only the preference objectives read them (see `data.preference`).
"""
from __future__ import annotations

from dataclasses import dataclass

from tuna.errors import UserError

ROLES = ("system", "user", "assistant", "tool")
FORMAT_KEYS = {  # checked in order; the first whose keys a record has wins
    "preference": ("chosen", "rejected"),
    "messages": ("messages",),
    "instruction": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}


RECORD_KEYS = {k for keys in FORMAT_KEYS.values() for k in keys} | {"input", "conversations"}  # what data.columns may map
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "model": "assistant", "system": "system", "tool": "tool",
                  "observation": "tool", "function_response": "tool"}


@dataclass
class Example:
    """Either chat `messages` (assistant turns from `train_from` on are trained), or raw `prompt`
    (untrained) + `completion` (trained) text."""

    messages: list[dict] | None = None
    prompt: str = ""
    completion: str = ""
    train_from: int = 0


def canonical(record: dict, where: str) -> dict:
    """ShareGPT and TRL's conversational prompt/completion as a `messages` record; others unchanged."""
    if "conversations" in record and "messages" not in record:
        turns = record["conversations"]
        if not isinstance(turns, list):
            raise UserError(f"{where}: `conversations` must be a list of {{from, value}} turns")
        messages = []
        for turn, message in enumerate(turns, start=1):
            if not isinstance(message, dict) or "from" not in message or "value" not in message:
                raise UserError(f"{where}, turn {turn}: a ShareGPT turn needs `from` and `value`")
            if message["from"] not in SHAREGPT_ROLES:
                raise UserError(f"{where}, turn {turn}: unknown ShareGPT speaker {message['from']!r}; use one of "
                                f"{', '.join(SHAREGPT_ROLES)}")
            messages.append({"role": SHAREGPT_ROLES[message["from"]], "content": message["value"]})
        rest = {k: v for k, v in record.items() if k != "conversations"}
        return {**rest, "messages": messages}
    if "chosen" not in record and isinstance(record.get("prompt"), list) and "completion" in record:
        if not isinstance(record["completion"], list):
            raise UserError(f"{where}: a conversational `prompt` (a list of messages) needs a conversational "
                            "`completion` too")
        rest = {k: v for k, v in record.items() if k not in ("prompt", "completion")}
        return {**rest, "messages": record["prompt"] + record["completion"], "prompt_turns": len(record["prompt"])}
    return record


@dataclass
class PreferenceExample:
    """Shared prompt turns, then each answer's turns (what follows the prompt in its conversation)."""

    prompt: list[dict]
    chosen: list[dict]
    rejected: list[dict]


def detect_format(records: list[dict]) -> str:
    first = records[0]
    for name, keys in FORMAT_KEYS.items():
        if all(k in first for k in keys):
            return name
    shapes = "; ".join(f"{n}: {', '.join(k)}" for n, k in FORMAT_KEYS.items())
    raise UserError(f"cannot tell the data format from the keys {sorted(first)}; expected one of ({shapes}), or set data.format")


def to_example(record: dict, fmt: str, index: int) -> Example:
    keys = FORMAT_KEYS.get(fmt)
    if keys is None:
        raise UserError(f"unknown data format {fmt!r}; use one of {', '.join(FORMAT_KEYS)}")
    missing = [k for k in keys if k not in record]
    if missing:
        raise UserError(f"record {index + 1}: format {fmt!r} needs key(s) {', '.join(missing)}")
    if fmt == "preference":
        raise UserError(f"record {index + 1}: preference pairs (chosen/rejected) train only with a preference "
                        "objective (dpo, simpo or orpo)")
    if fmt == "messages":
        train_from = record.get("prompt_turns", 0)
        if not isinstance(train_from, int) or isinstance(train_from, bool) or train_from < 0:
            raise UserError(f"record {index + 1}: `prompt_turns` must be a count of untrained opening turns")
        return Example(messages=_check_messages(record["messages"], index), train_from=train_from)
    if fmt == "instruction":
        prompt = _text(record, "instruction", index)
        if record.get("input"):
            prompt = f"{prompt}\n\n{_text(record, 'input', index)}"
        return Example(messages=[{"role": "user", "content": prompt},
                                 {"role": "assistant", "content": _text(record, "output", index)}])
    if fmt == "prompt_completion":
        return Example(prompt=_text(record, "prompt", index), completion=_text(record, "completion", index))
    return Example(completion=_text(record, "text", index))


def answered_example(record: dict, fmt: str, index: int) -> Example:
    """The record as one SFT example; a preference pair as its chosen conversation (what scoring and
    inspection look at)."""
    if fmt != "preference":
        return to_example(record, fmt, index)
    pair = to_preference_example(record, index)
    return to_example({"messages": pair.prompt + pair.chosen}, "messages", index)


def to_preference_example(record: dict, index: int) -> PreferenceExample:
    """Strings, or TRL's conversational lists: an explicit `prompt`, or whole conversations sharing their opening turns."""
    missing = [k for k in FORMAT_KEYS["preference"] if k not in record]
    if missing:
        raise UserError(f"record {index + 1}: format 'preference' needs key(s) {', '.join(missing)}")
    chosen = _turns(record, "chosen", "assistant", index)
    rejected = _turns(record, "rejected", "assistant", index)
    if record.get("prompt") is not None:
        return PreferenceExample(_turns(record, "prompt", "user", index), chosen, rejected)
    if isinstance(record["chosen"], str) or isinstance(record["rejected"], str):
        raise UserError(f"record {index + 1}: string `chosen` and `rejected` answers need a `prompt`")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    return PreferenceExample(chosen[:shared], chosen[shared:], rejected[shared:])


ANSWER_KEY = {"instruction": "output", "prompt_completion": "completion"}  # `messages`: the last assistant turn
PROMPT_KEYS = (("messages", "messages"), ("instruction", "instruction"), ("prompt", "prompt_completion"))


def prompt_format(record: dict) -> str | None:
    """The SFT format whose prompt side `record` holds, its answer present or not; None for none."""
    return next((fmt for key, fmt in PROMPT_KEYS if key in record), None)


def with_answer(record: dict, fmt: str, answer: str) -> dict:
    """A copy of `record` whose trained answer is `answer`: the final assistant turn of a conversation is
    replaced (or appended when the conversation ends on another role), `output` or `completion` set."""
    if fmt in ANSWER_KEY:
        return {**record, ANSWER_KEY[fmt]: answer}
    if fmt != "messages":
        raise UserError(f"records of format {fmt!r} have no answer to set")
    messages = [dict(m) for m in record["messages"]]
    if messages and messages[-1]["role"] == "assistant":
        messages[-1]["content"] = answer
    else:
        messages.append({"role": "assistant", "content": answer})
    return {**record, "messages": messages}


def answer_of(record: dict, fmt: str) -> str:
    """The trained answer: `output`, `completion`, or the last assistant turn."""
    if fmt in ANSWER_KEY:
        return record[ANSWER_KEY[fmt]]
    return [m for m in record["messages"] if m["role"] == "assistant"][-1]["content"]


def _turns(record: dict, key: str, role: str, index: int) -> list[dict]:
    """A string as one turn of `role`, or a list of checked messages."""
    value = record[key]
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if not isinstance(value, list):
        raise UserError(f"record {index + 1}: `{key}` must be a string or a list of {{role, content}} messages")
    return _check_messages(value, index, key)


def _text(record: dict, key: str, index: int) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise UserError(f"record {index + 1}: `{key}` must be a string, got {type(value).__name__}")
    return value


def _check_messages(messages, index: int, key: str = "messages") -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise UserError(f"record {index + 1}: `{key}` must be a non-empty list of {{role, content}}")
    for turn, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise UserError(f"record {index + 1}, message {turn}: needs `role` and `content`")
        if message["role"] not in ROLES:
            raise UserError(f"record {index + 1}, message {turn}: unknown role {message['role']!r}; use one of {', '.join(ROLES)}")
        if not isinstance(message["content"], str):
            got = "null" if message["content"] is None else type(message["content"]).__name__
            raise UserError(f"record {index + 1}, message {turn}: `content` must be a string, got {got}")
    return messages
