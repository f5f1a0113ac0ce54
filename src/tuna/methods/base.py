"""The Method interface: which parameters train, how, and how the result is saved.

A method is a class: its class attributes say what it is and what it supports, and one instance per
run holds the run's knobs (one attribute per config section it reads, `self.lora`) and whatever
state the method keeps over the run (Chain of LoRA's merged rounds, HFT's current round). That state
is the method's own, checkpointed through `extra_state`; nothing is patched onto the model.
The training loop calls only what is below and knows no method by name.

Adding one: a module with a subclass and a line in `tuna.methods.REGISTRY` (docs/adding-a-method.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from torch import nn

from tuna.sections import Section


class Method:
    name: ClassVar[str]
    summary: ClassVar[str]
    paper: ClassVar[str]
    default_lr: ClassVar[float]
    sections: ClassVar[dict[str, type[Section]]] = {}  # config key -> knob model, for each section it reads
    shardable: ClassVar[bool] = False  # FSDP2 can shard it: its training is the model's own forward and backward
    packs: ClassVar[bool] = True  # works on packed batches (examples back to back in one row)
    plain_forward: ClassVar[bool] = True  # the model is its decoder plus its head (train.loss_chunk_tokens runs them apart)
    saves_adapter: ClassVar[bool] = False  # `save_final` writes a PEFT adapter: every checkpoint then holds one too

    def __init__(self, **knobs: Section):
        unknown = set(knobs) - set(self.sections)
        if unknown:
            raise TypeError(f"method {self.name} reads no section {sorted(unknown)}")
        for key, model in self.sections.items():
            setattr(self, key, knobs.get(key) or model())

    @classmethod
    def from_recipe(cls, recipe) -> "Method":
        return cls(**{key: getattr(recipe, key) for key in cls.sections})

    def prepare(self, model: nn.Module, calibration=None) -> nn.Module:
        """The model, with exactly the parameters that train requiring grad. `calibration`
        (`tuna.data.calibration`) serves data-driven inits; it may be None in tests."""
        raise NotImplementedError

    def save_final(self, model: nn.Module, out: Path) -> None:
        model.save_pretrained(out)

    def on_step_start(self, model: nn.Module, step: int, max_steps: int) -> bool:
        """Before every optimizer step: may change which prepared parameters get gradients (HFT rounds) or
        re-initialise them (Chain of LoRA). True when trained values were reset, so the loop drops their
        optimizer state."""
        return False

    def lr_scales(self, model: nn.Module) -> dict[str, float]:
        """Per-parameter learning-rate multipliers by name (LoRA+); missing names use 1."""
        return {}

    def extra_state(self, model: nn.Module) -> dict | None:
        """What a checkpoint must hold besides the trainable tensors to resume exactly."""
        return None

    def load_extra_state(self, model: nn.Module, state: dict | None) -> None:
        """Put `extra_state` back, into this instance and the prepared model."""

    def adapter_off_is_base(self) -> bool:
        """True when the prepared model with its adapter disabled is exactly the starting model, so objectives
        that compare with a reference need no second copy of it (LoRA with a default init)."""
        return False


def round_of(step: int, rounds: int, max_steps: int) -> int:
    """Which of `rounds` equal parts of the run `step` falls in (HFT, Chain of LoRA)."""
    return min(step * rounds // max(max_steps, 1), rounds - 1)
