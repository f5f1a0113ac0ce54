"""A family of tiny Llama checkpoints: a base and fine-tunes of it (the base plus seeded changes)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import build_model, build_tokenizer


def fine_tune(base: Path, out: Path, seed: int, scale: float = 0.02) -> Path:
    """`base` with every tensor moved by seeded noise, saved with the base's tokenizer."""
    from transformers import AutoModelForCausalLM

    from tuna.models.load import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(base)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    model.save_pretrained(out)
    load_tokenizer(str(base)).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def family(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("family")
    base = root / "base"
    tokenizer = build_tokenizer(base)
    build_model(base, "llama", len(tokenizer), layers=4)  # gradients interpolate between layers
    return {"base": base, **{f"ft{i}": fine_tune(base, root / f"ft{i}", seed=i) for i in (1, 2, 3)}}
