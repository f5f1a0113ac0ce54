"""LoRA through PEFT: low-rank adapters on the chosen linear layers; saved as a standard PEFT adapter."""
from peft import LoraConfig, get_peft_model

from tuna.errors import UserError
from tuna.methods.base import Method


def prepare(model, recipe):
    cfg = recipe.lora
    if cfg.target_modules != "all-linear":
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = sorted(set(cfg.target_modules) - present)
        if missing:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
            raise UserError(f"lora.target_modules {missing} not in the model; its linear modules are: {', '.join(linear)}")
    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                        target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def save_adapter(model, out):
    model.save_pretrained(out)


METHOD = Method(name="lora", summary="low-rank adapters on linear layers (PEFT)",
                paper="LoRA: Low-Rank Adaptation of Large Language Models",
                knobs="lora.r, lora.alpha, lora.dropout, lora.target_modules",
                default_lr=2e-4, prepare=prepare, save_final=save_adapter)
