"""HFT: Half Fine-Tuning. Each round trains a random half of the parameters and freezes the other half.

Selection is per category, as in the paper: inside every decoder layer the attention matrices, the
FFN matrices and the norms are three categories, and half of each trains; the parameters outside the
layers (embeddings, final norm, untied head) are one more category. A unit is one module (its weight
and bias together). Odd-sized categories alternate between rounding down and up across layers, so the
model as a whole trains half. The half is re-drawn at each of `hft.rounds` equal rounds; frozen
parameters get no gradient, so AdamW leaves them bit-identical.
"""
from __future__ import annotations

import random
from collections import defaultdict

from pydantic import Field

from tuna.methods.base import Method, round_of
from tuna.models.layers import decoder_layers
from tuna.sections import Section


class HftKnobs(Section):
    rounds: int = Field(4, ge=1, description="how often the trained half is re-drawn over the run")
    seed: int = Field(0, description="seeds the half chosen in each round")


def categories(model) -> dict[str, list[str]]:
    """Category name -> the module paths (units) in it, in a fixed order."""
    layers = decoder_layers(model)
    layer_prefix = {id(layer): f"{i}" for i, layer in enumerate(layers)}
    layer_names = {name: layer_prefix[id(m)] for name, m in model.named_modules() if id(m) in layer_prefix}
    groups: dict[str, list[str]] = defaultdict(list)
    for name, _ in model.named_parameters():
        unit = name.rsplit(".", 1)[0]
        owner = next((lname for lname in layer_names if unit.startswith(lname + ".")), None)
        if owner is None:
            key = "outside"
        else:
            inner = unit[len(owner) + 1 :]
            key = f"layer{layer_names[owner]}/" + (inner.split(".")[0] if "." in inner else "norms")
        if unit not in groups[key]:
            groups[key].append(unit)
    return dict(groups)


def selected_units(model, seed: int, round_index: int) -> set[str]:
    """The units that train in `round_index`: half of every category, drawn from (seed, round)."""
    rng = random.Random(f"hft-{seed}-{round_index}")
    chosen: set[str] = set()
    for position, (_, units) in enumerate(sorted(categories(model).items())):
        k = len(units) // 2 + (len(units) % 2 if position % 2 else 0)
        chosen.update(rng.sample(units, k))
    return chosen


class Hft(Method):
    name = "hft"
    summary = "train a random half of each parameter category, re-drawn each round"
    paper = "HFT: Half Fine-Tuning for Large Language Models"
    default_lr = 2e-5
    sections = {"hft": HftKnobs}

    def __init__(self, **knobs):
        super().__init__(**knobs)
        self.current_round: int | None = None  # the round whose half is applied; None before the first step

    def prepare(self, model, calibration=None):
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def on_step_start(self, model, step: int, max_steps: int) -> bool:
        """Apply the round's half when the round changes (or on the first call, e.g. after a resume)."""
        round_index = round_of(step, self.hft.rounds, max_steps)
        if self.current_round == round_index:
            return False
        chosen = selected_units(model, self.hft.seed, round_index)
        for name, p in model.named_parameters():
            p.requires_grad_(name.rsplit(".", 1)[0] in chosen)
        self.current_round = round_index
        return False
