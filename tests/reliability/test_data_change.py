"""Resuming on data other than the checkpoint's is refused, or allowed with a warning that stays (defect 4)."""
from __future__ import annotations

import json

import yaml

from tests.reliability.conftest import resume


def own_data(run):
    """Point the run at a private copy of its data (same bytes, another path) and return the copy."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    copy = run.parent / "data.jsonl"
    copy.write_bytes(open(config["data"]["path"], "rb").read())
    config["data"]["path"] = str(copy)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return copy


def test_the_same_data_moved_elsewhere_resumes(stopped_run):
    own_data(stopped_run)
    assert resume(stopped_run) == 0


def test_deleted_lines_are_refused_then_allowed_with_a_kept_warning(stopped_run, capsys):
    data = own_data(stopped_run)
    data.write_text("".join(data.read_text().splitlines(keepends=True)[5:]))
    assert resume(stopped_run) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the data changed since the checkpoint: the train data" in last and "--allow-data-change" in last
    assert resume(stopped_run, "--allow-data-change") == 0
    assert "warning: resumed on changed data" in capsys.readouterr().err
    warnings = json.loads((stopped_run / "summary.json").read_text())["warnings"]
    assert len(warnings) == 1 and "changed" in warnings[0]
    assert "resumed on changed data" in (stopped_run / "report.html").read_text()
