"""From `data.*` config to rendered train and held-out examples.

The split is drawn from the records (or read from a file of its own), and both splits are rendered
by the objective's data kind (`data.kinds`): single sequences, preference pairs, or prompts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from tuna.data.kinds import SEQUENCES, DataKind
from tuna.data.mix import mixed_records
from tuna.data.prompt_variants import read_variants, variant_records
from tuna.data.question_free import without_questions
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
    train_versions: list[list] | None = None  # PAFT: every training item under each instruction, item-major

    def train_sequences(self) -> list[Rendered]:
        """Every rendered training sequence; a pair gives both of its answers."""
        return [row for item in self.train for row in self.kind.rows(item)]


def load_splits(data_cfg, tokenizer, seed: int, kind=SEQUENCES,
                rewrite_train: Callable[[list[dict]], tuple[list[dict], str]] | None = None) -> Splits:
    """Records read, split, and rendered as the objective's `kind` (`data.kinds`). `rewrite_train`: the
    objective replaces training records (S3FT); its note joins the train summary."""
    mix_note = None
    if data_cfg.sources:
        records, mix_note = mixed_records(data_cfg.sources, data_cfg.columns, seed)
    elif data_cfg.path is None:
        raise UserError("data.path is not set; point it at a JSONL, JSON, Parquet, CSV file or a datasets directory")
    else:
        records = read_records(data_cfg.path, data_cfg.columns)
    if not records:
        raise UserError(f"{data_cfg.path}: the dataset is empty")
    split = data_cfg.eval_split
    if isinstance(split, str):
        train_records, eval_records = records, read_records(split, data_cfg.columns)
    else:
        order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
        n_eval = int(len(records) * split)
        if split > 0 and n_eval == 0 and len(records) > 1:
            n_eval = 1
        eval_records = records.subset(order[:n_eval])
        train_records = records.subset(sorted(order[n_eval:]))
    if data_cfg.drop_question:
        with naming_sources(train_records):
            train_records = Records(without_questions(train_records, data_cfg.format), train_records.origins)
    note = None
    if rewrite_train is not None:
        with naming_sources(train_records):
            rewritten, note = rewrite_train(train_records)
        # a rewrite that keeps one record per record keeps their origins; one that adds records names its own
        train_records = rewritten if isinstance(rewritten, Records) else Records(rewritten, train_records.origins)
    with naming_sources(train_records):
        train, train_stats = kind.render(train_records, data_cfg, tokenizer)
        versions = instruction_versions(train_records, data_cfg, tokenizer, kind, len(train)) \
            if data_cfg.prompt_variants else None
    if versions:
        train_stats.notes.append(f"PAFT: {len(versions[0]) - 1} paraphrased instructions besides each record's own")
    train_stats.notes += [n for n in (note, mix_note) if n]
    evals, eval_stats = [], None
    if eval_records:
        with naming_sources(eval_records):
            evals, eval_stats = kind.render(eval_records, data_cfg, tokenizer)
    return Splits(train, evals, train_stats, eval_stats, kind, versions)


def instruction_versions(records, data_cfg, tokenizer, kind, count: int) -> list[list]:
    """Each training item under its own instruction and under every variant, rendered like the items."""
    rendered = [kind.render(Records(version, records.origins), data_cfg, tokenizer)[0]
                for version in variant_records(records, data_cfg.format, read_variants(data_cfg.prompt_variants))]
    if any(len(r) != count for r in rendered):
        raise UserError("with data.prompt_variants some instruction makes an example too long and it is dropped; "
                        "use data.overflow: truncate or a larger data.max_tokens")
    return [list(item) for item in zip(*rendered)]
