"""`train.compile`: torch.compile each decoder block in place.

Blocks rather than the whole model: every block has the same code, so one compiled graph serves them
all (short compile time), the loss and the sampling code stay eager, and parameter names, PEFT
adapters, checkpoints and hooks (NEFTune) are untouched because `Module.compile` compiles the
module's call without wrapping it. Graphs re-specialise when shapes change; dynamic shapes keep
that to a few recompiles for variable-length batches.
"""
from __future__ import annotations

from tuna.models.layers import decoder_layers


def compile_blocks(model) -> int:
    """Compile every decoder block in place; returns how many."""
    blocks = decoder_layers(model)
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)
