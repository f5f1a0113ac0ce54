"""Render examples to token ids plus labels, where -100 marks tokens that carry no loss.

Chat is rendered with the model's own chat template. The assistant spans are found by rendering the
conversation prefix by prefix: what `messages[:i+1]` adds beyond `messages[:i]` + generation prompt
is assistant turn i (its content and end-of-turn token; trailing whitespace excluded). Tokens that
start inside such a span are trained. A template that is not prefix-stable is refused, not guessed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tuna.data.formats import Example, detect_format, to_example
from tuna.errors import UserError
from tuna.models.forward import IGNORE  # noqa: F401  (data's labels follow the models' convention)


@dataclass
class Rendered:
    input_ids: list[int]
    labels: list[int]

    @property
    def target_count(self) -> int:
        return sum(label != IGNORE for label in self.labels)


@dataclass
class RenderStats:
    kept: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    dropped_no_target: int = 0
    dropped_empty_completion: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.kept} kept"]
        if self.truncated:
            parts.append(f"{self.truncated} truncated to max_tokens")
        if self.dropped_overlong:
            parts.append(f"{self.dropped_overlong} dropped as over max_tokens")
        if self.dropped_empty_completion:
            parts.append(f"{self.dropped_empty_completion} dropped with an empty completion")
        if self.dropped_no_target:
            parts.append(f"{self.dropped_no_target} dropped with no trainable tokens")
        parts.extend(self.notes)
        return ", ".join(parts)


def render_records(records: list[dict], fmt: str, tokenizer, *, train_on: str, max_tokens: int,
                   overflow: str) -> tuple[list[Rendered], RenderStats]:
    if not records:
        raise UserError("the dataset is empty")
    fmt = detect_format(records) if fmt == "auto" else fmt
    stats = RenderStats()
    rendered = []
    for index, record in enumerate(records):
        example = to_example(record, fmt, index)
        if train_on == "completion" and completion_is_empty(example):
            stats.dropped_empty_completion += 1
            continue
        item = render_example(example, tokenizer, train_on=train_on)
        if len(item.input_ids) > max_tokens:
            if overflow == "drop":
                stats.dropped_overlong += 1
                continue
            stats.truncated += 1
            item = Rendered(item.input_ids[:max_tokens], item.labels[:max_tokens])
        if item.target_count == 0:
            stats.dropped_no_target += 1
            continue
        rendered.append(item)
    stats.kept = len(rendered)
    if not rendered:
        raise UserError(f"no example has trainable tokens ({stats.summary()}); check data.format, data.train_on and data.max_tokens")
    return rendered, stats


def completion_is_empty(example: Example) -> bool:
    """A completion (or every assistant turn) of only whitespace: training on it teaches only to stop."""
    if example.messages is None:
        return not example.completion.strip()
    replies = [m["content"] for m in example.messages if m["role"] == "assistant"]
    return bool(replies) and not any(str(reply).strip() for reply in replies)


def render_example(example: Example, tokenizer, *, train_on: str = "completion") -> Rendered:
    if example.messages is not None:
        return _render_chat(example.messages, tokenizer, train_on, example.train_from)
    prompt_ids = tokenizer(example.prompt).input_ids if example.prompt else []
    completion_ids = tokenizer(example.completion, add_special_tokens=False).input_ids
    if tokenizer.eos_token_id is not None:
        completion_ids.append(tokenizer.eos_token_id)
    prompt_labels = list(prompt_ids) if train_on == "all" else [IGNORE] * len(prompt_ids)
    return Rendered(prompt_ids + completion_ids, prompt_labels + completion_ids)


def chat_text(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    if not tokenizer.chat_template:
        raise UserError("this tokenizer has no chat template; use prompt_completion or text data, or a model with a template")
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError as exc:
        raise UserError(f"the model's chat template refused a conversation ({exc})") from None


def assistant_spans(tokenizer, messages: list[dict], from_turn: int = 0) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns (those from `from_turn` on)."""
    text = chat_text(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i < from_turn:
            continue
        before = chat_text(tokenizer, messages[:i], generation_prompt=True) if i else ""
        through = chat_text(tokenizer, messages[: i + 1])
        if not (through.startswith(before) and text.startswith(through)):
            raise UserError("the chat template renders a conversation differently from its prefixes, so the assistant "
                            "tokens cannot be located; set data.train_on: all or use a prefix-stable template")
        spans.append((len(before), len(through.rstrip())))
    return text, spans


def _render_chat(messages: list[dict], tokenizer, train_on: str, train_from: int = 0) -> Rendered:
    text, spans = assistant_spans(tokenizer, messages, train_from)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    if train_on == "all":
        return Rendered(ids, list(ids))
    labels = [tid if any(s <= start < e for s, e in spans) else IGNORE
              for tid, (start, _) in zip(ids, encoded["offset_mapping"])]
    return Rendered(ids, labels)
