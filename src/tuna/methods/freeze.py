"""Freeze tuning: only the top `freeze.trainable_layers` decoder layers train.

Lower layers hold general features; training only the top of the stack is the cheap baseline that
BLURB-style studies found competitive. Embeddings, the final norm and the head stay frozen.
"""
from tuna.errors import UserError
from tuna.methods.base import Method, decoder_layers, save_full_model


def prepare(model, recipe, calibration=None):
    layers = decoder_layers(model)
    k = recipe.freeze.trainable_layers
    if k > len(layers):
        raise UserError(f"freeze.trainable_layers is {k} but the model has only {len(layers)} layers")
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in layers[len(layers) - k :]:
        for p in layer.parameters():
            p.requires_grad_(True)
    return model


METHOD = Method(name="freeze", summary="train only the top decoder layers",
                paper="Fine-Tuning Large Neural Language Models for Biomedical NLP (layer freezing)",
                knobs="freeze.trainable_layers", default_lr=2e-5, prepare=prepare, save_final=save_full_model)
