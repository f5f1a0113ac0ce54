"""A Hugging Face hub cache in a temporary directory, laid out as `from_pretrained` leaves one (blobs, a
snapshot of links to them, refs/main), holding a tiny test model under a made-up hub id, and made the
cache of this process (offline)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

REVISION = "0123456789abcdef0123456789abcdef01234567"


def use_hub_cache(root: Path, monkeypatch, models: dict[str, Path]) -> Path:
    """A cache under `root` holding each `{hub id: checkpoint directory}`; the process reads only it, offline."""
    import huggingface_hub.constants as constants

    cache = root / "hub"
    for hub, source in models.items():
        repo = cache / f"models--{hub.replace('/', '--')}"
        snapshot = repo / "snapshots" / REVISION
        (repo / "blobs").mkdir(parents=True)
        snapshot.mkdir(parents=True)
        for f in sorted(source.iterdir()):
            data = f.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            os.symlink(os.path.relpath(blob, snapshot), snapshot / f.name)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(REVISION)
    for name, value in (("HF_HOME", str(root)), ("HF_HUB_CACHE", str(cache)), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read at import: set here for this process
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache
