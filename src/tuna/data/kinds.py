"""Kinds of training data: what an objective trains on, and everything the loop does with it.

Each objective names its kind. A kind owns
- `render`: reading records into training items, and refusing records it cannot use;
- `refuse`: the `data.*` / `train.*` knobs that make no sense for it (a message, or None);
- `collate` and `batch_weight`: a micro-batch and its share of the step normaliser;
- `length` and `rows`: how long an item is and the padded rows it becomes (sorting, padding figures);
- `evaluate`: the held-out metrics logged as `eval/<name>`;
- `varies_by_rank`: why its forward passes differ from rank to rank, where they do (FSDP cannot follow).
- `packs`: whether its items are single sequences, which `data.batching: auto` packs.
The loop, the batches and the distributed code call these and never ask which objective runs.

- `sequences`: rendered examples with a loss mask (SFT and its relatives). Held out: loss and perplexity.
- `pairs`: preference pairs, each a chosen and a rejected answer to one prompt (DPO, SimPO, ORPO); a
  micro-batch holds the chosen rows, then the rejected ones. Held out: the objective's own loss and
  statistics, as means over pairs.
- `prompts`: prompts with their records; the objective samples completions itself (GRPO). Held out:
  the mean reward (`objective.reward`) of greedy answers of up to `max_new_tokens` (a knob every
  objective on prompts has) tokens.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from tuna.data.batch import collate
from tuna.data.formats import detect_format
from tuna.data.pause import add_pauses
from tuna.data.preference import Pair, collate_pairs, eval_pair_batches, render_pairs
from tuna.data.prompts import PromptItem, collate_prompts, render_prompts
from tuna.data.render import Rendered, RenderStats, render_records
from tuna.data.scoring import heldout_loss
from tuna.errors import UserError
from tuna.models.forward import evaluating
from tuna.models.generate import greedy_batches


@dataclass(frozen=True)
class DataKind:
    name: str
    unit: str  # what one micro-batch holds `micro_batch_size` of
    render: Callable[[list[dict], object, object], tuple[list, RenderStats]]  # (records, data_cfg, tokenizer)
    refuse: Callable[[object, object], str | None]  # (data_cfg, train_cfg) -> why a knob does not apply
    collate: Callable[[list, int, str], dict]  # (items, pad_id, weighting)
    batch_weight: Callable[[dict], float]
    length: Callable[[object], int]
    rows: Callable[[object], list[Rendered]]  # the sequences an item is run as
    evaluate: Callable[..., dict]  # (model, items, objective, ctx, *, batch_size, pad_id, device, autocast)
    varies_by_rank: str | None = None
    packs: bool = False  # items are single sequences, so `data.batching: auto` packs them


def token_weight(batch: dict) -> float:
    """A sequence micro-batch's share of the step normaliser: its target tokens, or its sequences."""
    return float(batch["weights"].sum())


# sequences ------------------------------------------------------------------------------------------------

def render_sequences(records: list[dict], data_cfg, tokenizer) -> tuple[list[Rendered], RenderStats]:
    """Pause-tuning's markers (a record-level transform) first, then the chat template and loss mask."""
    pauses = None
    if data_cfg.pause_tokens is not None:
        records, pauses = add_pauses(records, data_cfg.format, tokenizer, data_cfg.pause_tokens)
    rendered, stats = render_records(records, data_cfg.format, tokenizer, train_on=data_cfg.train_on,
                                     max_tokens=data_cfg.max_tokens, overflow=data_cfg.overflow)
    if pauses is not None:
        stats.notes.append(pauses.summary())
    return rendered, stats


def refuse_for_sequences(data_cfg, train_cfg) -> str | None:
    if data_cfg.format == "preference":
        return "data.format: preference holds preference pairs, which this objective does not train on"
    return None


def evaluate_sequences(model, items, objective, ctx, **options) -> dict:
    heldout = heldout_loss(model, items, **options)
    return {"loss": heldout["loss"], "ppl": heldout["ppl"]}


SEQUENCES = DataKind(name="sequences", unit="examples", render=render_sequences, refuse=refuse_for_sequences,
                     collate=collate, batch_weight=token_weight, length=lambda item: len(item.input_ids),
                     rows=lambda item: [item], evaluate=evaluate_sequences, packs=True)


# pairs ----------------------------------------------------------------------------------------------------

def render_preference_pairs(records: list[dict], data_cfg, tokenizer) -> tuple[list[Pair], RenderStats]:
    fmt = detect_format(records) if data_cfg.format == "auto" else data_cfg.format
    if fmt != "preference":
        raise UserError(f"the preference objectives (dpo, simpo, orpo) need records with `chosen` and `rejected` "
                        f"answers (format 'preference'), but the data is {fmt!r}")
    return render_pairs(records, tokenizer, max_tokens=data_cfg.max_tokens, overflow=data_cfg.overflow)


def refuse_for_pairs(data_cfg, train_cfg) -> str | None:
    """The knobs that make no sense for whole preference pairs are refused rather than ignored."""
    unsupported = {"data.batching: packed": data_cfg.batching == "packed",
                   "data.train_on: all": data_cfg.train_on == "all",
                   "data.mask_thought_ratio": data_cfg.mask_thought_ratio > 0,
                   "data.pause_tokens": data_cfg.pause_tokens is not None,
                   "data.drop_question": data_cfg.drop_question,
                   "data.prompt_variants": data_cfg.prompt_variants is not None,
                   "train.loss_weighting: sequence": train_cfg.loss_weighting == "sequence"}
    named = [knob for knob, is_set in unsupported.items() if is_set]
    if named:
        return (f"{named[0]} does not apply to objective {{objective}}, which weighs whole preference pairs "
                "(answer tokens only, padded batches); remove it")
    if data_cfg.format not in ("auto", "preference"):
        return f"objective {{objective}} trains on preference pairs; data.format must be auto or preference, not {data_cfg.format}"
    return None


def pair_weight(batch: dict) -> float:
    """A pair micro-batch's share of the step normaliser: its pairs (two rows each)."""
    return batch["input_ids"].shape[0] / 2


def evaluate_pairs(model, pairs: list[Pair], objective, ctx, *, batch_size: int, pad_id: int, device: torch.device,
                   autocast=contextlib.nullcontext) -> dict[str, float]:
    """The objective's loss and statistics, as means over the held-out pairs."""
    totals: dict[str, float] = {}
    with evaluating(model):
        for _, batch in eval_pair_batches(pairs, batch_size, pad_id):
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                loss, stats = objective.loss(model, batch, len(pairs), ctx)
            for key, value in {"loss": float(loss), **stats}.items():
                totals[key] = totals.get(key, 0.0) + value
    return totals


PAIRS = DataKind(name="pairs", unit="preference pairs", render=render_preference_pairs, refuse=refuse_for_pairs,
                 collate=lambda pairs, pad_id, weighting: collate_pairs(pairs, pad_id), batch_weight=pair_weight,
                 length=lambda pair: pair.length, rows=lambda pair: [pair.chosen, pair.rejected],
                 evaluate=evaluate_pairs)


# prompts --------------------------------------------------------------------------------------------------

def render_prompt_items(records: list[dict], data_cfg, tokenizer) -> tuple[list[PromptItem], RenderStats]:
    return render_prompts(records, data_cfg.format, tokenizer, max_tokens=data_cfg.max_tokens)


def refuse_for_prompts(data_cfg, train_cfg) -> str | None:
    if (data_cfg.batching == "packed" or data_cfg.mask_thought_ratio > 0 or data_cfg.drop_question
            or data_cfg.prompt_variants is not None):
        return ("objective {objective} trains on its own sampled completions; data.batching: packed, "
                "data.mask_thought_ratio, data.drop_question and data.prompt_variants do not apply")
    return None


def evaluate_prompts(model, items: list[PromptItem], objective, ctx, *, batch_size: int, **options) -> dict:
    """Mean reward of greedy answers to held-out prompts: did the policy improve where it did not train?"""
    total = 0.0
    for start, texts in greedy_batches(model, ctx.tokenizer, [i.input_ids for i in items],
                                       max_new_tokens=ctx.knobs.max_new_tokens, batch_size=batch_size):
        total += sum(objective.reward(texts, items[start : start + len(texts)], ctx))
    return {"reward": total / max(len(items), 1)}


PROMPTS = DataKind(name="prompts", unit="prompts", render=render_prompt_items, refuse=refuse_for_prompts,
                   collate=lambda items, pad_id, weighting: collate_prompts(items),
                   batch_weight=lambda batch: float(len(batch["prompt_ids"])), length=lambda item: len(item.input_ids),
                   rows=lambda item: [item], evaluate=evaluate_prompts,
                   varies_by_rank="samples completions of different lengths on each rank")
