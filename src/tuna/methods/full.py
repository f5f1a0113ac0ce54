"""Full fine-tuning: every parameter trains."""
from tuna.methods.base import Method


class Full(Method):
    name = "full"
    summary = "train every parameter"
    paper = "-"
    default_lr = 2e-5
    shardable = True

    def prepare(self, model, calibration=None):
        for p in model.parameters():
            p.requires_grad_(True)
        return model
