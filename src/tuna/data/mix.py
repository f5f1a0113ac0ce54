"""`data.sources`: several data sets mixed into one, by share (`weight`) or by number (`count`).

A `count` source gives exactly that many records (a seeded sample; repeated, in order, once it runs
out). The `weight` sources (weight 1 unless set) together give as many records as they hold: each
record is drawn from source i with probability wᵢ / Σw, and each source is read in a seeded order,
starting over when it runs out. Sources of different formats are mixed as chat `messages` (see
`data.convert`); a `text` or `preference` source mixes only with sources of its own format. The
mix is printed when the run starts; the recipe (sources and seed) reproduces it exactly.
"""
from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field, model_validator

from tuna.data.convert import converted
from tuna.data.formats import detect_format
from tuna.data.read import Records, naming_sources, read_records
from tuna.errors import UserError
from tuna.sections import Section


class Source(Section):
    path: str = Field(description="JSONL, JSON, Parquet, CSV file or a datasets save_to_disk directory")
    weight: float | None = Field(None, gt=0, description="share of the mix, relative to the other weighted sources")
    count: int | None = Field(None, ge=1, description="exactly this many records (repeated if the source has fewer)")
    columns: dict[str, str] | None = Field(None, description="this file's column for each of tuna's record keys")

    @model_validator(mode="after")
    def _one_amount(self) -> "Source":
        if self.weight is not None and self.count is not None:
            raise ValueError(f"source {self.path}: set weight or count, not both")
        return self


def mixed_records(sources: list[Source], columns: dict[str, str] | None, seed: int) -> tuple[Records, str]:
    """The mixed records (each remembering its file and line) and a one-line account of the mix."""
    generator = torch.Generator().manual_seed(seed)
    read = [read_records(s.path, s.columns or columns) for s in sources]
    for source, records in zip(sources, read):
        if not records:
            raise UserError(f"data source {source.path} is empty")
    read = same_format(sources, read)
    picks: list[tuple[int, int]] = []  # (source, record)
    for i, (source, records) in enumerate(zip(sources, read)):
        if source.count is not None:
            picks += [(i, j) for j in cycled(len(records), source.count, generator)]
    weighted = [i for i, s in enumerate(sources) if s.count is None]
    if weighted:
        weights = torch.tensor([sources[i].weight or 1.0 for i in weighted], dtype=torch.float64)
        total = sum(len(read[i]) for i in weighted)
        choice = torch.multinomial(weights, total, replacement=True, generator=generator).tolist()
        orders = {i: iter(cycled(len(read[i]), total, generator)) for i in weighted}
        picks += [(weighted[c], next(orders[weighted[c]])) for c in choice]
    order = torch.randperm(len(picks), generator=generator).tolist()
    picks = [picks[k] for k in order]
    rows = Records([read[i][j] for i, j in picks], [read[i].origins[j] for i, j in picks])
    taken = [sum(1 for i, _ in picks if i == s) for s in range(len(sources))]
    note = "mix: " + ", ".join(f"{Path(s.path).name} {n} ({n / len(picks):.1%})" for s, n in zip(sources, taken))
    return rows, note


def cycled(size: int, count: int, generator: torch.Generator) -> list[int]:
    """`count` indices into `size` records: seeded orders of all of them, one after another."""
    out: list[int] = []
    while len(out) < count:
        out += torch.randperm(size, generator=generator).tolist()
    return out[:count]


def same_format(sources: list[Source], read: list[Records]) -> list[Records]:
    """The sources as they are when they share a format, else each as chat `messages`."""
    formats = [detect_format(records) for records in read]
    if len(set(formats)) == 1:
        return read
    for source, fmt in zip(sources, formats):
        if fmt in ("text", "preference"):
            raise UserError(f"data source {source.path} holds {fmt} records, which mix only with {fmt} sources "
                            f"(the others here are {', '.join(sorted(set(formats) - {fmt}))})")
    out = []
    for records, fmt in zip(read, formats):
        with naming_sources(records):
            out.append(Records([converted(r, fmt, "messages", i) for i, r in enumerate(records)], records.origins))
    return out
