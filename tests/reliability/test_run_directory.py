"""A run directory is only ever a run's: refused commands touch nothing (defects 6 and 7), a log without a
checkpoint behind it is set aside (8), and directories are made with the user's umask."""
from __future__ import annotations

import dataclasses
import os

import yaml

from tests.reliability.conftest import losses, resume, tuna, write_config
from tuna.objectives import REGISTRY


def snapshot(directory):
    return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_a_refused_resume_with_another_config_leaves_the_run_as_it_was(stopped_run, tmp_path, template, capsys):
    (tmp_path / "other").mkdir()
    other = write_config(tmp_path / "other", template["model"], template["data"], max_steps=6)
    raw = yaml.safe_load(other.read_text())
    other.write_text(yaml.safe_dump({**raw, "method": "lora", "output_dir": str(stopped_run)}))
    before = snapshot(stopped_run)
    assert tuna("train", str(other), "--resume", str(stopped_run)) == 2
    assert "was made for a different model or method" in capsys.readouterr().err
    assert snapshot(stopped_run) == before
    assert resume(stopped_run) == 0  # and the run itself still resumes


def test_an_output_dir_holding_other_files_is_refused_and_untouched(tmp_path, template, capsys):
    mine = tmp_path / "run"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own work")
    (mine / "results.json").write_text("{}")
    before = snapshot(mine)
    assert tuna("train", str(write_config(tmp_path, template["model"], template["data"]))) == 2
    assert "holds files that are not a tuna run" in capsys.readouterr().err
    assert snapshot(mine) == before


def test_a_log_without_a_checkpoint_is_set_aside_so_steps_are_not_logged_twice(tmp_path, template, monkeypatch,
                                                                               capsys):
    config = write_config(tmp_path, template["model"], template["data"])
    real = REGISTRY["sft"]
    calls = []

    def crash_at_step_2(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real.loss(*args)

    monkeypatch.setitem(REGISTRY, "sft", dataclasses.replace(real, loss=crash_at_step_2))
    try:
        tuna("train", str(config))
    except RuntimeError:
        pass
    run = tmp_path / "run"
    assert list(losses(run)) == [1] and not (run / "checkpoints").exists()
    monkeypatch.setitem(REGISTRY, "sft", real)
    assert tuna("train", str(config)) == 0
    assert "stopped before its first checkpoint is now" in capsys.readouterr().err
    assert list(losses(run)) == [1, 2, 3, 4]
    assert len(list(run.glob("metrics.jsonl.stale-*"))) == 1


def test_checkpoint_directories_follow_the_umask(stopped_run):
    mask = os.umask(0)
    os.umask(mask)
    for directory in (stopped_run / "checkpoints").iterdir():
        assert directory.stat().st_mode & 0o777 == 0o777 & ~mask
    assert (stopped_run / "final").stat().st_mode & 0o777 == 0o777 & ~mask
