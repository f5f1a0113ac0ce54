"""Losses, registered by their config name."""
from tuna.objectives import anchored_sft, dft, dpo, grpo, orpo, otr, rft, self_sft, sft, simpo
from tuna.objectives.base import Objective

REGISTRY: dict[str, Objective] = {o.name: o for o in (sft.OBJECTIVE, dft.OBJECTIVE, anchored_sft.OBJECTIVE,
                                                      dpo.OBJECTIVE, simpo.OBJECTIVE, orpo.OBJECTIVE, grpo.OBJECTIVE,
                                                      self_sft.OBJECTIVE, otr.OBJECTIVE, rft.OBJECTIVE)}
