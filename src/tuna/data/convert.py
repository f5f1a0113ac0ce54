"""`tuna data convert`: records of any format tuna reads, written as chat `messages` or as TRL's
conversational prompt/completion. Conversions keep chat semantics (the chat template still applies)
and the trained turns; keys that are not part of a format (ids, metadata) are kept as they are."""
from __future__ import annotations

from tuna.data.formats import RECORD_KEYS, detect_format, to_example
from tuna.data.read import Records, naming_sources
from tuna.errors import UserError

TARGETS = ("messages", "prompt_completion")
FORMAT_FIELDS = RECORD_KEYS | {"prompt_turns"}


def convert(records: Records, to: str) -> list[dict]:
    if to not in TARGETS:
        raise UserError(f"tuna data convert writes {' or '.join(TARGETS)}, not {to!r}")
    if not records:
        raise UserError("the dataset is empty")
    fmt = detect_format(records)
    if fmt in ("text", "preference"):
        raise UserError(f"{fmt} records have no prompt and answer turns to convert")
    with naming_sources(records):
        return [converted(record, fmt, to, index) for index, record in enumerate(records)]


def converted(record: dict, fmt: str, to: str, index: int) -> dict:
    example = to_example(record, fmt, index)
    messages = example.messages if example.messages is not None else \
        ([{"role": "user", "content": example.prompt}] if example.prompt else []) + \
        [{"role": "assistant", "content": example.completion}]  # plain text: one user turn, one assistant turn
    extra = {k: v for k, v in record.items() if k not in FORMAT_FIELDS}
    if to == "prompt_completion":  # TRL's format trains one completion: from the last assistant turn on
        split = example.train_from or last_reply(messages, index)
        return {**extra, "prompt": messages[:split], "completion": messages[split:]}
    untrained_reply = any(m["role"] == "assistant" for m in messages[:example.train_from])
    return {**extra, "messages": messages, **({"prompt_turns": example.train_from} if untrained_reply else {})}


def last_reply(messages: list[dict], index: int) -> int:
    """Where the trained part of a plain conversation starts: its last assistant turn."""
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not replies:
        raise UserError(f"record {index + 1}: the conversation has no assistant turn to train on")
    return replies[-1]
