"""LongLoRA: LoRA plus trainable embeddings and norms, trained with shifted sparse attention.

The paper finds LoRA alone fails at context extension unless the input embeddings and the
normalisation layers train too. Here they are PEFT `modules_to_save` (a trainable copy, saved in
the adapter), so `final/` is a standard PEFT adapter that plain `PeftModel.from_pretrained` loads.
With tied input/output embeddings the copy stays tied (PEFT `ensure_weight_tying`), so the head
follows the trained embedding as it would in the original model. Training uses S2-Attn
(`tuna.models.s2attn`) with groups of `longlora.group_size_ratio` × `data.max_tokens`
tokens, the target context length; evaluation, generation and the saved adapter use full attention.
"""
from __future__ import annotations

import math

from tuna.errors import UserError
from tuna.methods import lora
from tuna.methods.base import Method, decoder_layers
from tuna.models.s2attn import use_s2_attention


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


def prepare(model, recipe, calibration=None):
    if recipe.data.batching == "packed":
        raise UserError("longlora's shifted sparse attention cannot keep packed examples apart; "
                        "use data.batching: padded or sorted")
    if recipe.lora.init not in ("default", "gaussian"):
        raise UserError(f"longlora supports lora.init: default or gaussian, not {recipe.lora.init}")
    group = max(2, math.ceil(recipe.longlora.group_size_ratio * recipe.data.max_tokens))
    use_s2_attention(model, group, attention_modules(model))
    return lora.prepare(model, recipe, calibration, modules_to_save=embedding_and_norm_names(model),
                        ensure_weight_tying=tied_embeddings(model))


METHOD = Method(name="longlora", summary="LoRA + trainable embeddings and norms, shifted sparse attention in training",
                paper="LongLoRA: Efficient Fine-tuning of Long-Context Large Language Models",
                knobs=f"longlora.group_size_ratio, {lora.KNOBS}", default_lr=2e-5, prepare=prepare,
                save_final=lora.save_adapter, lr_scales=lora.plus_lr_scales,
                adapter_off_is_base=lora.base_is_untouched)
