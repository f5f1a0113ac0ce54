"""Freeze tuning: only the top `freeze.trainable_layers` decoder layers train.

Lower layers hold general features; training only the top of the stack is the cheap baseline that
BLURB-style studies found competitive. Embeddings, the final norm and the head stay frozen.
"""
from pydantic import Field

from tuna.errors import UserError
from tuna.methods.base import Method
from tuna.models.layers import decoder_layers
from tuna.sections import Section


class FreezeKnobs(Section):
    trainable_layers: int = Field(2, ge=1, description="how many of the top decoder layers train")


class Freeze(Method):
    name = "freeze"
    summary = "train only the top decoder layers"
    paper = "Fine-Tuning Large Neural Language Models for Biomedical NLP (layer freezing)"
    default_lr = 2e-5
    sections = {"freeze": FreezeKnobs}
    shardable = True

    def prepare(self, model, calibration=None):
        layers = decoder_layers(model)
        k = self.freeze.trainable_layers
        if k > len(layers):
            raise UserError(f"freeze.trainable_layers is {k} but the model has only {len(layers)} layers")
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in layers[len(layers) - k :]:
            for p in layer.parameters():
                p.requires_grad_(True)
        return model
