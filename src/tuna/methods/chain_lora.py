"""Chain of LoRA (COLA): residual learning by a chain of LoRA rounds.

The run is split into `chain_lora.rounds` equal rounds. At each round boundary the trained adapter
is merged into the base weights (W += scaling·B·A) and a fresh adapter is initialised (A random,
B zero) with fresh optimizer state, as in the paper's Frank-Wolfe view: each round learns the
residual left by the previous ones. The learning-rate schedule runs over the whole run, not per
round. The merged rounds are kept (as their factors) in checkpoints, so a resume re-merges them.
Saved: one standard PEFT adapter whose rank is r × rounds, the concatenation of every round's
factors, which applies to the original base (ΔW = Σ scaling·B_i·A_i).
"""
from __future__ import annotations

import copy

import torch
from pydantic import Field
from safetensors.torch import save_file

from tuna.errors import UserError
from tuna.methods import lora
from tuna.methods.base import round_of
from tuna.sections import Section

ADAPTER = "default"


class ChainLoraKnobs(Section):
    rounds: int = Field(3, ge=1, description="LoRA rounds; after each, the adapter merges into the base and restarts")


def lora_layers(model) -> dict:
    from peft.tuners.lora import LoraLayer  # peft loads on use: importing the registry stays light

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


@torch.no_grad()
def merge_factors(model, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    layers = lora_layers(model)
    for name, (b, a) in factors.items():
        weight = layers[name].get_base_layer().weight
        weight += (b.to(weight.device) @ a.to(weight.device)).to(weight.dtype)


def current_factors(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {name: ((layer.lora_B[ADAPTER].weight * layer.scaling[ADAPTER]).detach().clone(),
                   layer.lora_A[ADAPTER].weight.detach().clone())
            for name, layer in lora_layers(model).items()}


class ChainLora(lora.Lora):
    name = "chain_lora"
    summary = "LoRA in rounds; each round merges into the base and restarts (COLA)"
    paper = "Chain of LoRA: Efficient Fine-tuning of Language Models via Residual Learning"
    default_lr = 2e-4
    sections = {"lora": lora.LoraKnobs, "chain_lora": ChainLoraKnobs}
    shardable = False

    def __init__(self, **knobs):
        super().__init__(**knobs)
        # the merged rounds, each {module path: (scaled B, A)}
        self.rounds: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []

    def prepare(self, model, calibration=None):
        if self.lora.init not in ("default", "gaussian"):
            raise UserError(f"chain_lora re-initialises each round's adapter as plain LoRA; "
                            f"lora.init: {self.lora.init} is not supported with it (use default or gaussian)")
        model = super().prepare(model, calibration)
        self.rounds = []
        return model

    def on_step_start(self, model, step: int, max_steps: int) -> bool:
        """At a round boundary: merge the adapter into the base and start a fresh one."""
        target = round_of(step, self.chain_lora.rounds, max_steps)
        restarted = False
        while len(self.rounds) < target:
            factors = current_factors(model)
            merge_factors(model, factors)
            self.rounds.append(factors)
            init = lora.PEFT_INIT[self.lora.init]
            for layer in lora_layers(model).values():
                layer.reset_lora_parameters(ADAPTER, init)
            restarted = True
        return restarted

    def extra_state(self, model) -> dict:
        return {"rounds": self.rounds}

    def load_extra_state(self, model, state: dict) -> None:
        for factors in state["rounds"]:
            merge_factors(model, factors)
        self.rounds = state["rounds"]

    def save_final(self, model, out) -> None:
        """All rounds, including the current one, as a single PEFT adapter of rank r × rounds."""
        rounds = self.rounds + [current_factors(model)]
        tensors = {}
        for name in lora_layers(model):
            tensors[f"{name}.lora_A.weight"] = torch.cat([r[name][1] for r in rounds], dim=0).cpu().contiguous()
            tensors[f"{name}.lora_B.weight"] = torch.cat([r[name][0] for r in rounds], dim=1).cpu().contiguous()
        config = copy.deepcopy(model.peft_config[ADAPTER])
        config.r = config.lora_alpha = config.r * len(rounds)  # scaling 1: each B above already carries its own
        config.init_lora_weights = True
        config.save_pretrained(out)
        save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})

    def adapter_off_is_base(self) -> bool:
        """Merged rounds live in the base weights, so the adapter switched off is not the starting model."""
        return False
