"""`tuna data inspect`: what training will see, before it trains: counts, lengths, defects, and examples
rendered token by token with their loss mask.

Each record is rendered as training renders it (the recipe's template, `train_on`, pause tokens). The
examples shown are the first ones of the rendered training data; under a recipe, the first training
micro-batch is shown too, exactly as the loss sees it (packed rows with their example borders, masked
thoughts), from the same batching code the loop uses.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch

from tuna.data.batch import TrainBatches
from tuna.data.dedup import normalised, record_text
from tuna.data.formats import answered_example, detect_format
from tuna.data.kinds import SEQUENCES
from tuna.data.mask_thought import mask_thought, mask_token_id
from tuna.data.read import Records, naming_sources
from tuna.data.render import completion_is_empty, render_example
from tuna.models.forward import IGNORE

TRAINED, PLAIN, SPECIAL, RESET = "\x1b[30;42m", "\x1b[2m", "\x1b[1;35m", "\x1b[0m"


@dataclass
class Token:
    text: str
    trained: bool
    special: bool


@dataclass
class Shown:
    title: str
    tokens: list[Token]

    def final_eos(self, eos: str) -> str:
        """Whether the last end-of-sequence token is trained, or that there is none."""
        last = next((t for t in reversed(self.tokens) if t.text == eos), None)
        if last is None:
            return f"no {eos} in this example"
        return f"the final {eos} is {'trained' if last.trained else 'NOT trained'}"


@dataclass
class Inspection:
    source: str
    format: str
    lengths: list[int]
    max_tokens: int
    overflow: str
    empty: list[str] = field(default_factory=list)  # origins of records whose answers are blank
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (origin, origin of its first copy)
    no_target: list[str] = field(default_factory=list)
    examples: list[Shown] = field(default_factory=list)
    eos: str = ""
    notes: str = ""

    @property
    def over_limit(self) -> int:
        return sum(n > self.max_tokens for n in self.lengths)

    def length_summary(self) -> dict[str, float]:
        ordered = sorted(self.lengths)
        return {"min": ordered[0], "median": statistics.median(ordered),
                "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], "max": ordered[-1]}


def shown(title: str, input_ids: list[int], labels: list[int], tokenizer) -> Shown:
    special = set(tokenizer.all_special_ids)
    return Shown(title, [Token(tokenizer.decode([t]), label != IGNORE, t in special)
                         for t, label in zip(input_ids, labels)])


def inspect_records(records: Records, source: str, data_cfg, tokenizer, *, count: int = 3,
                    recipe=None) -> Inspection:
    """The inspection of `records` as `data_cfg` renders them; a `recipe` adds its first training micro-batch."""
    fmt = detect_format(records) if data_cfg.format == "auto" else data_cfg.format
    found = Inspection(source, fmt, [], data_cfg.max_tokens, data_cfg.overflow, eos=tokenizer.eos_token or "")
    first_copy: dict[str, str] = {}
    with naming_sources(records):
        for index, (record, origin) in enumerate(zip(records, records.origins)):
            example = answered_example(record, fmt, index)
            item = render_example(example, tokenizer, train_on=data_cfg.train_on)
            found.lengths.append(len(item.input_ids))
            if completion_is_empty(example):
                found.empty.append(origin)
            if item.target_count == 0:
                found.no_target.append(origin)
            text = normalised(record_text(record))
            if text in first_copy:
                found.duplicates.append((origin, first_copy[text]))
            first_copy.setdefault(text, origin)
        if fmt != "preference":
            items, stats = SEQUENCES.render(records, data_cfg, tokenizer)
            found.notes = stats.summary()
            found.examples = [shown(f"example {i + 1}", item.input_ids, item.labels, tokenizer)
                              for i, item in enumerate(items[:count])]
            if recipe is not None:
                found.examples.append(first_batch_row(items, recipe, tokenizer))
    return found


def first_batch_row(items: list, recipe, tokenizer) -> Shown:
    """Row 1 of the first training micro-batch, built by the loop's own batching (and thought masking)."""
    data_cfg, train_cfg = recipe.data, recipe.train
    batches = TrainBatches(items, SEQUENCES, batching=recipe.batching, batch_size=train_cfg.micro_batch_size,
                           max_tokens=data_cfg.max_tokens, weighting=train_cfg.loss_weighting,
                           pad_id=tokenizer.pad_token_id, seed=train_cfg.seed, rows_per_step=train_cfg.grad_accum)
    batch = batches.next()
    if data_cfg.mask_thought_ratio:
        masking = torch.Generator().manual_seed(train_cfg.seed * 1_000_003)  # the loop's generator at step 0
        batch = mask_thought(batch, data_cfg.mask_thought_ratio, mask_token_id(tokenizer), masking)
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    if "attention_mask" in batch:  # padded rows: padding is not shown
        width = int(batch["attention_mask"][0].sum())
        ids, labels = ids[:width], labels[:width]
    return shown(f"first training micro-batch, row 1 ({recipe.batching})", ids, labels, tokenizer)


def histogram_lines(lengths: list[int], bins: int = 10, width: int = 40) -> list[str]:
    low, high = min(lengths), max(lengths)
    step = max(1, -(-(high - low + 1) // bins))
    counts = [0] * bins
    for n in lengths:
        counts[min(bins - 1, (n - low) // step)] += 1
    top = max(counts)
    return [f"  {low + b * step:>6}-{low + (b + 1) * step - 1:<6} {'█' * round(width * c / top):<{width}} {c}"
            for b, c in enumerate(counts) if low + b * step <= high]


def terminal_report(found: Inspection, *, colour: bool) -> str:
    """The inspection as text; trained tokens on green (or between « » without colour), specials in ⟨ ⟩."""
    stats = found.length_summary()
    lines = [f"{found.source}: {found.format} format, {len(found.lengths)} records",
             f"tokens per record: min {stats['min']}, median {stats['median']:g}, p95 {stats['p95']}, max {stats['max']}",
             *histogram_lines(found.lengths),
             f"over data.max_tokens ({found.max_tokens}): {found.over_limit} records would be "
             f"{'truncated' if found.overflow == 'truncate' else 'dropped'}",
             f"defects: {len(found.empty)} empty or blank answers, {len(found.duplicates)} exact duplicates, "
             f"{len(found.no_target)} with no trained token"]
    for what, origins in (("blank answer", found.empty), ("no trained token", found.no_target),
                          ("duplicate", [f"{a} (of {b})" for a, b in found.duplicates])):
        lines += [f"  {what}: {o}" for o in origins[:5]] + ([f"  ... and {len(origins) - 5} more"] if len(origins) > 5 else [])
    if found.notes:
        lines.append(f"rendered for training: {found.notes}")
    for example in found.examples:
        lines += ["", f"{example.title} ({sum(t.trained for t in example.tokens)} of {len(example.tokens)} tokens "
                      f"trained; {example.final_eos(found.eos)}):", render_tokens(example.tokens, colour)]
    return "\n".join(lines)


def render_tokens(tokens: list[Token], colour: bool) -> str:
    out, open_span = [], False
    for token in tokens:
        text = f"⟨{token.text}⟩" if token.special else token.text
        if colour:
            style = SPECIAL if token.special and not token.trained else TRAINED if token.trained else PLAIN
            out.append(f"{style}{text}{RESET}")
        else:
            if token.trained != open_span:
                out.append("«" if token.trained else "»")
                open_span = token.trained
            out.append(text)
    if open_span:
        out.append("»")
    return "".join(out)
