"""Full fine-tuning: every parameter trains."""
from tuna.methods.base import Method, save_full_model


def prepare(model, recipe, calibration=None):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


METHOD = Method(name="full", summary="train every parameter", paper="-", knobs="-",
                default_lr=2e-5, prepare=prepare, save_final=save_full_model)
