"""Read records (one dict per example) from JSONL, JSON, Parquet, CSV/TSV or a `save_to_disk` directory.

Text files are UTF-8, with or without a byte-order mark, with LF or CRLF line ends. Every record
remembers where it came from (`FILE, line N`), so a problem found later, while rendering, names the
line of the file rather than a count of records that skips blank lines.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from pathlib import Path

from tuna.data.formats import RECORD_KEYS, canonical
from tuna.errors import UserError


class Records(list):
    """Records, with `origins[i]` saying where record i came from."""

    def __init__(self, records: list, origins: list[str]):
        super().__init__(records)
        self.origins = origins

    def subset(self, indices: list[int]) -> "Records":
        return Records([self[i] for i in indices], [self.origins[i] for i in indices])


def read_records(path: str | Path, columns: dict[str, str] | None = None) -> Records:
    """The file's records; `columns` ({our key: the file's column}) renames columns first, then ShareGPT and
    TRL's conversational prompt/completion records become `messages` records (`formats.canonical`)."""
    unknown = sorted(set(columns or {}) - RECORD_KEYS)
    if unknown:
        raise UserError(f"columns: {unknown[0]!r} is not a record key tuna reads ({', '.join(sorted(RECORD_KEYS))})")
    records = read_raw(path)
    if columns:
        records = Records([renamed(r, columns) for r in records], records.origins)
    return Records([canonical(r, where) for r, where in zip(records, records.origins)], records.origins)


def renamed(record: dict, columns: dict[str, str]) -> dict:
    theirs = set(columns.values())
    return {**{k: v for k, v in record.items() if k not in theirs},
            **{ours: record[column] for ours, column in columns.items() if column in record}}


def read_raw(path: str | Path) -> Records:
    """The file's records exactly as written (what curation commands write back)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    if path.is_dir():
        rows = _read_saved_dataset(path)
        return Records(rows, [f"{path}, row {i + 1}" for i in range(len(rows))])
    suffix = path.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet,
               ".csv": _read_csv, ".tsv": _read_csv}
    if suffix not in readers:
        raise UserError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(sorted(readers))} or a datasets directory")
    records = readers[suffix](path)
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise UserError(f"{records.origins[bad]} is a {type(records[bad]).__name__}, not an object")
    return records


@contextlib.contextmanager
def naming_sources(records: list):
    """Errors about `record N` of `records` raised inside the block name the file and line instead."""
    try:
        yield
    except UserError as exc:
        origins = getattr(records, "origins", None)
        found = re.match(r"record (\d+)\b", str(exc))
        if origins is None or found is None or not 0 < int(found.group(1)) <= len(origins):
            raise
        raise UserError(origins[int(found.group(1)) - 1] + str(exc)[found.end():]) from None


def _text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UserError(f"{path}: line {line} is not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}); "
                        "save the file as UTF-8") from None


def _read_jsonl(path: Path) -> Records:
    records, origins = [], []
    for number, line in enumerate(_text(path).split("\n"), start=1):  # not splitlines: U+2028 may sit in a string
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: line {number} is not valid JSON ({exc.msg} at column {exc.colno})") from None
        origins.append(f"{path}, line {number}")
    return Records(records, origins)


def _read_json(path: Path) -> Records:
    try:
        data = json.loads(_text(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of records (or {{\"data\": [...]}})")
    return Records(data, [f"{path}, record {i + 1}" for i in range(len(data))])


def _read_parquet(path: Path) -> Records:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise UserError(f"{path}: not a readable Parquet file ({exc})") from None
    return Records(rows, [f"{path}, row {i + 1}" for i in range(len(rows))])


def _read_csv(path: Path) -> Records:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(_text(path), newline=""), delimiter=delimiter)
    records, origins = [], []
    for row in reader:
        records.append(dict(row))
        origins.append(f"{path}, line {reader.line_num}")
    return Records(records, origins)


def _read_saved_dataset(path: Path) -> list[dict]:
    """A `Dataset.save_to_disk` directory; for a `DatasetDict`, its `train` split."""
    if not any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
        raise UserError(f"{path} is a directory but not a saved datasets directory (save_to_disk)")
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(str(path))
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise UserError(f"{path}: a DatasetDict without a `train` split (has {', '.join(dataset)})")
        dataset = dataset["train"]
    return dataset.to_list()
