"""Damaged checkpoints are found by their manifest and skipped for the newest whole one (defects 2 and 3);
a planted pickle never runs (12); a torn log line is dropped."""
from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from tests.reliability.conftest import losses, resume
from tuna.train import checkpoint

NEWEST = "step-0000004"


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_values(path):
    """Same size, other numbers: the silent corruption only a checksum sees."""
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    for i in range(header, min(header + 64, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "state truncated": lambda c: truncate(c / "state.pt"),
    "weights truncated": lambda c: truncate(c / "trainable.safetensors"),
    "state emptied": lambda c: (c / "state.pt").write_bytes(b""),
    "meta garbled": lambda c: (c / "meta.json").write_text("{not json"),
    "weights silently altered": lambda c: flip_values(c / "trainable.safetensors"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_is_skipped_and_the_older_one_resumes_exactly(damage, stopped_run, template,
                                                                                  capsys):
    DAMAGE[damage](stopped_run / "checkpoints" / NEWEST)
    assert resume(stopped_run) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {NEWEST} is skipped" in err and "resumed from" in err and "step-0000002" in err
    expected = template["losses"]
    assert losses(stopped_run) == pytest.approx(expected, abs=1e-5)  # steps 3..6 retrained from step 2


def test_a_torn_last_log_line_is_dropped(stopped_run, template):
    with (stopped_run / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 5, "train/lo')
    assert resume(stopped_run) == 0
    assert losses(stopped_run) == pytest.approx(template["losses"], abs=1e-5)


def test_the_divergence_message_never_names_a_checkpoint_that_failed_its_check(stopped_run, monkeypatch, capsys):
    truncate(stopped_run / "checkpoints" / NEWEST / "state.pt")
    from tuna.objectives import REGISTRY
    import dataclasses

    real = REGISTRY["sft"]
    monkeypatch.setitem(REGISTRY, "sft", dataclasses.replace(real, loss=lambda *a: (real.loss(*a)[0] * float("nan"), {})))
    assert resume(stopped_run) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "the last good checkpoint is" in last and "step-0000002" in last and NEWEST not in last


class Payload:
    """What a hostile state.pt holds: unpickling it would run a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(checkpoint_dir, marker):
    state = {"step": 4, "evil": Payload(marker)}
    with (checkpoint_dir / "state.pt").open("wb") as fh:
        pickle.dump(state, fh)
    checkpoint.write_manifest(checkpoint_dir)  # a forger can make the manifest match


def test_a_planted_pickle_is_never_executed(stopped_run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    plant(stopped_run / "checkpoints" / NEWEST, marker)
    assert resume(stopped_run) == 0  # the older, plain checkpoint resumes
    assert not marker.exists()
    err = capsys.readouterr().err
    assert f"checkpoint {NEWEST} is skipped: state.pt cannot be read as plain data" in err


def test_with_only_hostile_checkpoints_the_resume_is_refused_in_one_line(stopped_run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    for c in checkpoint.checkpoints(stopped_run / "checkpoints"):
        plant(c, marker)
    assert resume(stopped_run) == 2
    assert not marker.exists()
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("tuna: error: no checkpoint in") and "can be used" in last


def test_checkpoint_state_loads_as_plain_data(stopped_run):
    state = torch.load(stopped_run / "checkpoints" / NEWEST / "state.pt", weights_only=True)
    assert state["step"] == 4 and checkpoint.damage(stopped_run / "checkpoints" / NEWEST) is None
    manifest = json.loads((stopped_run / "checkpoints" / NEWEST / "manifest.json").read_text())
    assert set(manifest) == {"trainable.safetensors", "state.pt", "meta.json"}
