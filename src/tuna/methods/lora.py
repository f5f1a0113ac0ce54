"""LoRA and its PEFT variants (DoRA, rsLoRA): low-rank adapters saved in the standard PEFT format.

The variants are PEFT's own implementations, selected by a flag; all read the `lora.*` knobs.
"""
from peft import LoraConfig, get_peft_model

from tuna.errors import UserError
from tuna.methods.base import Method


def prepare(model, recipe, **variant):
    cfg = recipe.lora
    if cfg.target_modules != "all-linear":
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = sorted(set(cfg.target_modules) - present)
        if missing:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
            raise UserError(f"lora.target_modules {missing} not in the model; its linear modules are: {', '.join(linear)}")
    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                        target_modules=cfg.target_modules, task_type="CAUSAL_LM", **variant)
    return get_peft_model(model, config)


def save_adapter(model, out):
    model.save_pretrained(out)


KNOBS = "lora.r, lora.alpha, lora.dropout, lora.target_modules"
METHOD = Method(name="lora", summary="low-rank adapters on linear layers (PEFT)",
                paper="LoRA: Low-Rank Adaptation of Large Language Models", knobs=KNOBS,
                default_lr=2e-4, prepare=prepare, save_final=save_adapter)
DORA = Method(name="dora", summary="LoRA with the weight split into magnitude and direction (PEFT use_dora)",
              paper="DoRA: Weight-Decomposed Low-Rank Adaptation", knobs=KNOBS, default_lr=2e-4,
              prepare=lambda model, recipe: prepare(model, recipe, use_dora=True), save_final=save_adapter)
RSLORA = Method(name="rslora", summary="LoRA scaled by alpha/sqrt(r) instead of alpha/r (PEFT use_rslora)",
                paper="A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA", knobs=KNOBS, default_lr=2e-4,
                prepare=lambda model, recipe: prepare(model, recipe, use_rslora=True), save_final=save_adapter)
