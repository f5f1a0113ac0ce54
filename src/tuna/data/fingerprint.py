"""What the data files were when a checkpoint was written, so a resume can tell when they changed.

Per source (`train`, the training data, and `eval`, an eval file of its own): its path, size,
modification time and the sha256 of its bytes (for a `save_to_disk` directory, of every file in it).
The content decides: a file touched, or moved, but unchanged is the same data.
"""
from __future__ import annotations

import hashlib
from pathlib import Path


def files_of(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def file_digest(path: Path) -> str:
    """The sha256 of a file's bytes; for a directory, of each file's relative name and bytes, in order."""
    digest = hashlib.sha256()
    for f in files_of(path):
        if path.is_dir():
            digest.update(str(f.relative_to(path)).encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def data_fingerprint(data_cfg) -> dict[str, dict]:
    """{"train": {path, size, mtime, sha256} (or one "train source i" per mixed source), "eval": ... when the
    eval split is a file of its own}."""
    sources = {"train": data_cfg.path} if not data_cfg.sources else \
        {f"train source {i}": s.path for i, s in enumerate(data_cfg.sources, start=1)}
    if isinstance(data_cfg.eval_split, str):
        sources["eval"] = data_cfg.eval_split
    prints = {}
    for role, source in sources.items():
        path = Path(source).expanduser() if source else None
        if path is None or not path.exists():
            continue  # reading it says what is missing
        files = files_of(path)
        prints[role] = {"path": str(source), "size": sum(f.stat().st_size for f in files),
                        "mtime": max((f.stat().st_mtime for f in files), default=0.0), "sha256": file_digest(path)}
    return prints


def changes(then: dict[str, dict], now: dict[str, dict]) -> list[str]:
    """What differs between two fingerprints, one phrase per source."""
    found = []
    for role in sorted(set(then) | set(now)):
        before, after = then.get(role), now.get(role)
        if before is None or after is None:
            found.append(f"the {role} data {'is new' if before is None else 'is gone'}")
        elif before["sha256"] != after["sha256"]:
            found.append(f"the {role} data {after['path']} changed ({before['size']:,} bytes then, {after['size']:,} now)")
    return found
