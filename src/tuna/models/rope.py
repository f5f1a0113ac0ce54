"""Extend a RoPE model's context window: linear (position interpolation), dynamic NTK or YaRN.

transformers builds a model's rotary embedding from `config.rope_parameters`. We rewrite that dict
and `max_position_embeddings`, then rebuild the rotary modules from the config, so the frequencies
are transformers' own and a model saved afterwards reloads with the same scaling.

`max_position_embeddings` becomes factor x the original window for linear and YaRN. Dynamic NTK is
the exception: transformers reads `max_position_embeddings` as the length past which it starts
rescaling, so there it stays the original window (the model then takes any length).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from tuna.errors import UserError
from tuna.sections import Section


class RopeScaling(Section):
    type: Literal["linear", "dynamic", "yarn"] = Field(description="linear (position interpolation), dynamic NTK or YaRN")
    factor: float = Field(gt=1.0, description="new context window over the model's original one")
    original_max_position_embeddings: int | None = Field(None, ge=1, description="the window the model was trained "
                                                         "on; unset reads the model config")


def apply_rope_scaling(model, spec) -> None:
    """Rescale the model's RoPE in place as `spec` (a `RopeScaling`, or None for no change) says."""
    if spec is None:
        return
    rotaries = [(name, module) for name, module in model.named_modules()
                if hasattr(module, "inv_freq") and hasattr(getattr(module, "config", None), "rope_parameters")]
    if not rotaries:
        raise UserError(f"model.rope_scaling: this {model.config.model_type} model has no rotary position embedding "
                        "(RoPE) built from its config, so there is nothing to rescale; remove model.rope_scaling")
    configs = {id(module.config): module.config for _, module in rotaries}
    changed = [_scale_config(config, spec) for config in configs.values()]
    if not any(changed):
        return  # already scaled exactly so, e.g. a checkpoint saved after scaling
    for name, module in rotaries:
        parent_name, _, attr = name.rpartition(".")
        rebuilt = type(module)(config=module.config).to(module.inv_freq.device)
        setattr(model.get_submodule(parent_name), attr, rebuilt)


def _scale_config(config, spec) -> bool:
    """Write the scaling into `config`; False when it already holds this very scaling."""
    params = config.rope_parameters
    if not params or "rope_type" not in params:
        raise UserError(f"model.rope_scaling: {config.model_type} keeps a RoPE setting per layer type, which tuna "
                        "cannot rescale; remove model.rope_scaling")
    current = params["rope_type"]
    if current == spec.type and params.get("factor") == spec.factor:
        return False
    if current != "default":
        held = f"{current} x{params['factor']:g}" if params.get("factor") else current
        raise UserError(f"model.rope_scaling: the model already uses {held} RoPE scaling, and a {spec.type} "
                        f"x{spec.factor:g} scaling cannot be stacked on it; start from a model without scaling "
                        "or remove model.rope_scaling")
    original = spec.original_max_position_embeddings or getattr(config, "max_position_embeddings", None)
    if not original:
        raise UserError("model.rope_scaling: the model config has no max_position_embeddings, so the window it "
                        "was trained on is unknown; set model.rope_scaling.original_max_position_embeddings")
    scaled = {**params, "rope_type": spec.type, "factor": spec.factor}
    if spec.type == "yarn":
        scaled["original_max_position_embeddings"] = original
    config.rope_parameters = scaled
    config.max_position_embeddings = original if spec.type == "dynamic" else round(spec.factor * original)
    return True


def context_window(model) -> int:
    """The positions a model is meant for. `max_position_embeddings` already counts linear and YaRN scaling
    as `model.rope_scaling` writes it; dynamic NTK keeps the original there and stretches it by its factor;
    hub YaRN configs that name their original window are stretched from that."""
    config = model.config
    window = config.max_position_embeddings
    rope = getattr(config, "rope_parameters", None) or {}
    factor = rope.get("factor")
    if factor and rope.get("rope_type") == "dynamic":
        return round(window * factor)
    if factor and rope.get("original_max_position_embeddings"):
        return max(window, round(rope["original_max_position_embeddings"] * factor))
    return window
