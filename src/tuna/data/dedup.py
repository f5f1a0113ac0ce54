"""`tuna data dedup`: exact duplicates on normalised text, then near duplicates by MinHash LSH.

A record's text is every string it holds for training, in order (messages' contents, instruction,
input and output, prompt and completion, text, chosen and rejected). Normalised: lower case, runs of
whitespace as one space, trimmed. Near duplicates compare sets of character 5-grams of that text:
`datasketch`'s MinHash (256 permutations) and LSH, set 0.15 below `threshold` so that few true pairs
slip past it, propose candidates; a candidate is a duplicate when the exact Jaccard similarity of the
two sets reaches `threshold`. Records are taken in file order; a record is kept unless it
duplicates one already kept, and every removed record names the kept one it duplicates.
"""
from __future__ import annotations

import importlib.util
import re

from tuna.data.read import Records
from tuna.errors import UserError

PERMUTATIONS = 256
SHINGLE = 5


def record_text(record: dict) -> str:
    """Every string a record trains on (or scores with), in order."""
    parts: list[str] = []

    def collect(value) -> None:
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            for item in value:
                collect(item.get("content", item.get("value")) if isinstance(item, dict) else item)

    for key in ("messages", "conversations", "instruction", "input", "output", "prompt", "completion", "text",
                "chosen", "rejected"):
        collect(record.get(key))
    return "\n".join(parts)


def normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def shingles(text: str) -> set[str]:
    return {text[i:i + SHINGLE] for i in range(max(1, len(text) - SHINGLE + 1))}


def minhash(grams: set[str]):
    from datasketch import MinHash

    signature = MinHash(num_perm=PERMUTATIONS, seed=1)
    signature.update_batch([g.encode() for g in grams])
    return signature


def deduplicate(records: Records, threshold: float = 0.85) -> tuple[list[int], list[dict]]:
    """(indices kept, one entry per removed record: its index, the kept index it duplicates, how, similarity).
    `threshold` 1 finds exact duplicates only."""
    index = near_index(threshold) if threshold < 1 else None
    kept, removed, first_of, kept_grams = [], [], {}, {}
    for i, record in enumerate(records):
        text = normalised(record_text(record))
        if text in first_of:
            removed.append({"index": i, "duplicate_of": first_of[text], "kind": "exact", "similarity": 1.0})
            continue
        if index is not None:
            grams = shingles(text)
            signature = minhash(grams)
            matches = [(len(grams & kept_grams[j]) / len(grams | kept_grams[j]), j) for j in index.query(signature)]
            matches = [(s, j) for s, j in matches if s >= threshold]
            if matches:
                similarity, j = max(matches, key=lambda m: (m[0], -m[1]))
                removed.append({"index": i, "duplicate_of": j, "kind": "near", "similarity": round(similarity, 4)})
                continue
            index.insert(i, signature)
            kept_grams[i] = grams
        first_of[text] = i
        kept.append(i)
    return kept, removed


def near_index(threshold: float):
    if importlib.util.find_spec("datasketch") is None:
        raise UserError("near-duplicate search needs datasketch: `pip install datasketch` (or `pip install "
                        "'tuna[data]'`), or pass --near 1 for exact duplicates only")
    from datasketch import MinHashLSH

    return MinHashLSH(threshold=max(0.3, threshold - 0.15), num_perm=PERMUTATIONS)
