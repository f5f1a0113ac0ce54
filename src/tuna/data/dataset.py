"""From `data.*` config to rendered train and held-out examples.

Record-level transforms (Pause-tuning's pause markers) run before rendering, on both splits alike,
and what they did joins the split's render notes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tuna.data.pause import add_pauses
from tuna.data.read import read_records
from tuna.data.render import Rendered, RenderStats, render_records
from tuna.errors import UserError


@dataclass
class Splits:
    train: list[Rendered]
    eval: list[Rendered]
    train_stats: RenderStats
    eval_stats: RenderStats | None


def load_splits(data_cfg, tokenizer, seed: int) -> Splits:
    if data_cfg.path is None:
        raise UserError("data.path is not set; point it at a JSONL, JSON, Parquet, CSV file or a datasets directory")
    records = read_records(data_cfg.path)
    if not records:
        raise UserError(f"{data_cfg.path}: the dataset is empty")
    split = data_cfg.eval_split
    if isinstance(split, str):
        train_records, eval_records = records, read_records(split)
    else:
        order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
        n_eval = int(len(records) * split)
        if split > 0 and n_eval == 0 and len(records) > 1:
            n_eval = 1
        eval_records = [records[i] for i in order[:n_eval]]
        train_records = [records[i] for i in sorted(order[n_eval:])]
    train, train_stats = render_split(train_records, data_cfg, tokenizer)
    evals, eval_stats = render_split(eval_records, data_cfg, tokenizer) if eval_records else ([], None)
    return Splits(train, evals, train_stats, eval_stats)


def render_split(records: list[dict], data_cfg, tokenizer) -> tuple[list[Rendered], RenderStats]:
    pauses = None
    if data_cfg.pause_tokens is not None:
        records, pauses = add_pauses(records, data_cfg.format, tokenizer, data_cfg.pause_tokens)
    rendered, stats = render_records(records, data_cfg.format, tokenizer, train_on=data_cfg.train_on,
                                     max_tokens=data_cfg.max_tokens, overflow=data_cfg.overflow)
    if pauses is not None:
        stats.notes.append(pauses.summary())
    return rendered, stats
