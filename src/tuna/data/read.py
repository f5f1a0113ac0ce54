"""Read records (one dict per example) from JSONL, JSON, Parquet, CSV/TSV or a `save_to_disk` directory."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from tuna.errors import UserError


def read_records(path: str | Path) -> list[dict]:
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    if path.is_dir():
        return _read_saved_dataset(path)
    suffix = path.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet,
               ".csv": _read_csv, ".tsv": _read_csv}
    if suffix not in readers:
        raise UserError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(sorted(readers))} or a datasets directory")
    records = readers[suffix](path)
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise UserError(f"{path}: record {bad + 1} is a {type(records[bad]).__name__}, not an object")
    return records


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: line {number} is not valid JSON ({exc.msg} at column {exc.colno})") from None
    return records


def _read_json(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of records (or {{\"data\": [...]}})")
    return data


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise UserError(f"{path}: not a readable Parquet file ({exc})") from None


def _read_csv(path: Path) -> list[dict]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(encoding="utf-8", newline="") as fh:
        return [dict(row) for row in csv.DictReader(fh, delimiter=delimiter)]


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
