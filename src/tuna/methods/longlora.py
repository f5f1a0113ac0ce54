"""LongLoRA: LoRA plus trainable embeddings and norms, trained with shifted sparse attention.

The paper finds LoRA alone fails at context extension unless the input embeddings and the
normalisation layers train too. Here they are PEFT `modules_to_save` (a trainable copy, saved in
the adapter), so `final/` is a standard PEFT adapter that plain `PeftModel.from_pretrained` loads.
With tied input/output embeddings the copy stays tied (PEFT `ensure_weight_tying`), so the head
follows the trained embedding as it would in the original model. Training uses S2-Attn
(`tuna.models.s2attn`) with groups of `longlora.group_size_ratio` × `data.max_tokens`
tokens, the target context length; evaluation, generation and the saved adapter use full attention.
The context length comes with the calibration data (`Calibration.max_tokens`; 1024 without it).
Packed batches are refused by the config (`packs` below): S2-Attn cannot keep packed examples apart.
"""
from __future__ import annotations

import math

from pydantic import Field

from tuna.errors import UserError
from tuna.methods import lora
from tuna.models.layers import decoder_layers
from tuna.models.s2attn import use_s2_attention
from tuna.sections import Section

DEFAULT_CONTEXT = 1024  # the context length S2-Attn groups divide when no calibration data says it


class LongLoraKnobs(Section):
    group_size_ratio: float = Field(0.25, gt=0.0, le=1.0, description="S2-Attn group length over the sequence length")


def embedding_and_norm_names(model) -> list[str]:
    """The last name component of the input embedding and of every normalisation module (PEFT
    matches `modules_to_save` entries as suffixes of module names)."""
    embedding = model.get_input_embeddings()
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
             if m is embedding or "norm" in type(m).__name__.lower()}
    return sorted(names)


def tied_embeddings(model) -> bool:
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


def attention_modules(model) -> list:
    layers = decoder_layers(model)
    if not all(hasattr(layer, "self_attn") for layer in layers):
        raise UserError(f"longlora needs decoder blocks with a `self_attn` module (Llama, Qwen2, Mistral); "
                        f"{type(model).__name__} has none")
    return [layer.self_attn for layer in layers]


class LongLora(lora.Lora):
    name = "longlora"
    summary = "LoRA + trainable embeddings and norms, shifted sparse attention in training"
    paper = "LongLoRA: Efficient Fine-tuning of Long-Context Large Language Models"
    default_lr = 2e-5
    sections = {"lora": lora.LoraKnobs, "longlora": LongLoraKnobs}
    shardable = False
    packs = False  # longlora's shifted sparse attention cannot keep packed examples apart

    def prepare(self, model, calibration=None):
        if self.lora.init not in ("default", "gaussian"):
            raise UserError(f"longlora supports lora.init: default or gaussian, not {self.lora.init}")
        context = calibration.max_tokens if calibration is not None else DEFAULT_CONTEXT
        group = max(2, math.ceil(self.longlora.group_size_ratio * context))
        use_s2_attention(model, group, attention_modules(model))
        return self.wrap(model, calibration, modules_to_save=embedding_and_norm_names(model),
                         ensure_weight_tying=tied_embeddings(model))
