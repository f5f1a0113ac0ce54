"""From `data.*` config to rendered train and held-out examples.

The split is drawn from the records (or read from a file of its own), and both splits are rendered
by the objective's data kind (`data.kinds`): single sequences, preference pairs, or prompts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from tuna.data.kinds import SEQUENCES, DataKind
from tuna.data.read import Records, naming_sources, read_records
from tuna.data.render import Rendered, RenderStats
from tuna.errors import UserError


@dataclass
class Splits:
    train: list
    eval: list
    train_stats: RenderStats
    eval_stats: RenderStats | None
    kind: DataKind = SEQUENCES

    def train_sequences(self) -> list[Rendered]:
        """Every rendered training sequence; a pair gives both of its answers."""
        return [row for item in self.train for row in self.kind.rows(item)]


def load_splits(data_cfg, tokenizer, seed: int, kind=SEQUENCES,
                rewrite_train: Callable[[list[dict]], tuple[list[dict], str]] | None = None) -> Splits:
    """Records read, split, and rendered as the objective's `kind` (`data.kinds`). `rewrite_train`: the
    objective replaces training records (S3FT); its note joins the train summary."""
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
        eval_records = records.subset(order[:n_eval])
        train_records = records.subset(sorted(order[n_eval:]))
    note = None
    if rewrite_train is not None:
        with naming_sources(train_records):
            rewritten, note = rewrite_train(train_records)
        train_records = Records(rewritten, train_records.origins)  # a rewrite keeps one record per record
    with naming_sources(train_records):
        train, train_stats = kind.render(train_records, data_cfg, tokenizer)
    if note:
        train_stats.notes.append(note)
    evals, eval_stats = [], None
    if eval_records:
        with naming_sources(eval_records):
            evals, eval_stats = kind.render(eval_records, data_cfg, tokenizer)
    return Splits(train, evals, train_stats, eval_stats, kind)
