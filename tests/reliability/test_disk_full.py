"""A full disk ends a run with one line that names what is intact and how to go on (defect 5)."""
from __future__ import annotations

import subprocess

import pytest

from tests.reliability.conftest import tuna, write_config
from tuna.train import checkpoint


@pytest.fixture
def small_disk(tmp_path, template):
    """A tmpfs that holds the run's first checkpoint and not its second (needs root; skipped elsewhere)."""
    size = checkpoint.size_bytes(template["stopped"] / "checkpoints" / "step-0000002")
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size * 1.6) + 64 * 1024}", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


def test_a_full_disk_is_one_line_and_the_last_checkpoint_stays_good(small_disk, template, capsys):
    config = write_config(small_disk, template["model"], template["data"], max_steps=8)
    assert tuna("train", str(config)) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("tuna: error: no space left on the device of") and "step-0000002 is intact" in last
    assert "tuna train --resume" in last and "about" in last
    good = checkpoint.good_checkpoints(small_disk / "run" / "checkpoints")
    assert [p.name for p in good] == ["step-0000002"]
    assert not list((small_disk / "run" / "checkpoints").glob(".step-*"))  # the partial write is gone


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file data/3: "
                 "file write failed"),
    OSError(28, "No space left on device"),
])
def test_the_libraries_ways_of_saying_disk_full_are_recognised(error):
    wrapped = RuntimeError("while saving")
    wrapped.__cause__ = error
    assert checkpoint.disk_full(error) and checkpoint.disk_full(wrapped)
    assert not checkpoint.disk_full(RuntimeError("something else"))
