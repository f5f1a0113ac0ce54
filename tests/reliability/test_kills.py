"""A process killed at each phase of a checkpoint write or of the `final/` write (os._exit: no cleanup runs,
as with SIGKILL) resumes to exactly the uninterrupted run, leaves no temporary directory behind, and a
finished run resumed is left alone (defects 1 and 9)."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.reliability.conftest import losses, tuna, write_config

KILLER = """
import os, sys
import tuna.atomic as atomic, tuna.train.checkpoint as ck, tuna.train.loop as loop
from tuna.cli import main

phase, at, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
armed = [False]
real_save = ck.save

def save(directory, step, *args, **kwargs):
    armed[0] = step == at
    try:
        return real_save(directory, step, *args, **kwargs)
    finally:
        armed[0] = False

def dying(real):
    def call(*args, **kwargs):
        if armed[0]:
            os._exit(137)
        return real(*args, **kwargs)
    return call

def final_then_die(method, model, tokenizer, run_dir, **kwargs):
    with atomic.atomic_directory(run_dir / "final") as tmp:
        method.save_final(model, tmp)
        os._exit(137)

ck.save = save
if phase == "weights-written":
    ck.torch.save = dying(ck.torch.save)
elif phase == "state-written":
    ck.write_manifest = dying(ck.write_manifest)
elif phase == "before-rename":
    atomic.os.rename = dying(atomic.os.rename)
elif phase == "final":
    loop.save_final = final_then_die
sys.exit(main(argv))
"""


@pytest.mark.parametrize("phase", ["weights-written", "state-written", "before-rename", "final"])
def test_a_kill_while_writing_resumes_to_the_uninterrupted_run(phase, template, tmp_path, capsys):
    config = write_config(tmp_path, template["model"], template["data"], max_steps=6)
    at = 6 if phase == "final" else 4  # the checkpoint of step 4, or final/ after step 6
    killed = subprocess.run([sys.executable, "-c", KILLER, phase, str(at), "train", str(config), "--no-progress"],
                            capture_output=True, text=True)
    assert killed.returncode == 137, killed.stderr[-2000:]
    run = tmp_path / "run"
    assert [*(run / "checkpoints").glob(".step-*"), *run.glob(".final-*")]  # the write the kill cut short
    assert tuna("train", "--resume", str(run)) == 0
    assert not [*(run / "checkpoints").glob(".step-*"), *run.glob(".final-*")]  # cleared on resume
    assert losses(run) == pytest.approx(template["losses"], abs=1e-5)
    assert (run / "final" / "model.safetensors").is_file()
    summary = (run / "summary.json").read_text()
    assert '"train_loss": null' not in summary and '"interrupted": false' in summary


def test_resuming_a_finished_run_changes_nothing(stopped_run, capsys):
    before = {p: p.read_bytes() for p in stopped_run.rglob("*") if p.is_file()}
    assert tuna("train", "--resume", str(stopped_run)) == 0
    assert "is finished (4 steps, final/ complete); nothing to do" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in stopped_run.rglob("*") if p.is_file()} == before


def test_a_copied_finished_run_resumes_as_finished(stopped_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(stopped_run, copy, symlinks=True)
    assert tuna("train", "--resume", str(copy)) == 0
    assert "nothing to do" in capsys.readouterr().err
