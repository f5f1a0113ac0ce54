import json

import pytest

from tuna.data.read import read_records
from tuna.errors import UserError

ROWS = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]


def test_reads_every_supported_container(tmp_path):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "\n")
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    (tmp_path / "w.json").write_text(json.dumps({"data": ROWS}))
    (tmp_path / "d.csv").write_text("prompt,completion\na,b\nc,d\n")
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    DatasetDict({"train": Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    for name in ("d.jsonl", "d.json", "w.json", "d.csv", "d.parquet", "ds", "dd"):
        assert read_records(tmp_path / name) == ROWS, name


def test_malformed_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(UserError, match="line 3 is not valid JSON"):
        read_records(path)


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        read_records(tmp_path / "nope.jsonl")
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(UserError, match="unsupported file type '.xml'"):
        read_records(tmp_path / "x.xml")
