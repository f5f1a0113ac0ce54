"""Re-initialising the top decoder layers before fine-tuning (BLURB: helps on tiny data sets).

The layers get the model class's own initialisation (`_init_weights`), drawn from the seeded torch
RNG. Loaded weights carry transformers' "already initialised" flag, which is cleared first.
"""
from __future__ import annotations

from tuna.errors import UserError
from tuna.models.layers import decoder_layers


def reinit_top_layers(model, count: int) -> None:
    layers = decoder_layers(model)
    if count > len(layers):
        raise UserError(f"init.reinit_top_layers is {count} but the model has only {len(layers)} layers")
    for layer in layers[len(layers) - count :]:
        for module in layer.modules():
            module._is_hf_initialized = False
            for p in module.parameters(recurse=False):
                p._is_hf_initialized = False
            model._init_weights(module)


def check_reinitialised_layers_train(model, count: int, method: str) -> None:
    """Re-initialised weights that the method keeps frozen would stay random: refuse that."""
    layers = decoder_layers(model)
    frozen = [name for layer in layers[len(layers) - count :] for name, p in layer.named_parameters()
              if not p.requires_grad]
    if frozen:
        raise UserError(f"init.reinit_top_layers re-initialises weights that method `{method}` keeps frozen "
                        f"(e.g. {frozen[0]}), so they would stay random; use it with full, hft, or freeze with "
                        f"trainable_layers >= {count}")
