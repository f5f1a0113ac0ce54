"""Preference pairs: one prompt with a chosen and a rejected answer, rendered as two sequences.

Records hold `chosen`, `rejected` and usually `prompt` (see `formats.to_preference_example`): strings
become a user turn and assistant turns; TRL's conversational lists are taken as they are. Both
sequences go through the chat template, and their labels cover only the answer's assistant turns,
so a sequence's log-prob is that of the answer given the prompt.

A pair whose two sequences are the same carries no preference: it is dropped and counted.
`data.overflow` applies to the pair as a whole: both sequences are cut to `data.max_tokens`, or the
pair is dropped when either is longer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tuna.data.batch import collate
from tuna.data.formats import to_preference_example
from tuna.data.render import IGNORE, Rendered, RenderStats, assistant_spans
from tuna.errors import UserError


@dataclass
class Pair:
    chosen: Rendered
    rejected: Rendered
    # The starting model's summed answer log-probs (chosen, rejected), when computed once before
    # training (`objectives.reference_logps`); None when a live reference gives them per batch.
    reference_logps: tuple[float, float] | None = None

    @property
    def length(self) -> int:
        """The longer sequence: what a padded micro-batch holding this pair is at least as wide as."""
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))


def render_pairs(records: list[dict], tokenizer, *, max_tokens: int, overflow: str) -> tuple[list[Pair], RenderStats]:
    stats, pairs, identical = RenderStats(), [], 0
    for index, record in enumerate(records):
        example = to_preference_example(record, index)
        chosen = render_answer(example.prompt + example.chosen, len(example.prompt), tokenizer)
        rejected = render_answer(example.prompt + example.rejected, len(example.prompt), tokenizer)
        if max(len(chosen.input_ids), len(rejected.input_ids)) > max_tokens:
            if overflow == "drop":
                stats.dropped_overlong += 1
                continue
            stats.truncated += 1
            chosen, rejected = truncate(chosen, max_tokens), truncate(rejected, max_tokens)
        if chosen.input_ids == rejected.input_ids:  # the same answer, or answers that differ only past max_tokens
            identical += 1
            continue
        if chosen.target_count == 0 or rejected.target_count == 0:
            stats.dropped_no_target += 1
            continue
        pairs.append(Pair(chosen, rejected))
    stats.kept = len(pairs)
    if identical:
        stats.notes.append(f"{identical} dropped with identical chosen and rejected")
    if not pairs:
        raise UserError(f"no preference pair is usable ({stats.summary()}); check the data and data.max_tokens")
    return pairs, stats


def render_answer(messages: list[dict], prompt_turns: int, tokenizer) -> Rendered:
    """The conversation with labels on the assistant turns after the first `prompt_turns` messages only."""
    text, spans = assistant_spans(tokenizer, messages)
    answer_spans = spans[sum(m["role"] == "assistant" for m in messages[:prompt_turns]):]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [tid if any(s <= start < e for s, e in answer_spans) else IGNORE
              for tid, (start, _) in zip(encoded["input_ids"], encoded["offset_mapping"])]
    return Rendered(encoded["input_ids"], labels)


def truncate(item: Rendered, max_tokens: int) -> Rendered:
    return Rendered(item.input_ids[:max_tokens], item.labels[:max_tokens])


def collate_pairs(pairs: list[Pair], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows 0..n-1 are the chosen sequences and rows n..2n-1 the rejected ones, pair k in rows k and n+k.

    Precomputed reference log-probs, when the pairs carry them, come along in the same row order.
    """
    batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    del batch["weights"]  # preference losses weigh pairs, not tokens
    if pairs[0].reference_logps is not None:
        batch["reference_logps"] = torch.tensor([p.reference_logps[0] for p in pairs] +
                                                [p.reference_logps[1] for p in pairs])
    return batch


def eval_pair_batches(pairs: list[Pair], batch_size: int, pad_id: int):
    """Fixed-order batches of `batch_size` pairs, sorted by length, each with the pairs' indices in `pairs`."""
    order = sorted(range(len(pairs)), key=lambda i: pairs[i].length)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        yield indices, collate_pairs([pairs[i] for i in indices], pad_id)
