"""The merge recipe: mergekit's YAML shape (`merge_method`, `base_model`, `models`, `parameters`, `dtype`,
`tokenizer_source`) for the methods tuna shares with it, plus tuna's own keys (`lines`, `seed`, `output`).

A parameter is a number, a gradient (a list interpolated over the layers), or a list of
`{filter, value}` conditions matched against the tensor name, as in mergekit. A model's own
`parameters` win over the global ones, which win over the method's default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuna.errors import UserError

Setting = Any  # a scalar, a gradient list, or {filter, value} conditions: see `evaluate`


class InputModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="a model spec: alias, checkpoint directory, .gguf, cached hub id, tuna run "
                                   "directory, PEFT adapter directory, or mergekit's `base+adapter`")
    parameters: dict[str, Setting] = {}


class Lines(BaseModel):
    """LiNeS: scale layer ℓ's part of the merged task vector by α + β·(ℓ−1)/(L−1)."""
    model_config = ConfigDict(extra="forbid")
    alpha: float = 0.0
    beta: float = 1.0


class MergeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    merge_method: str
    base_model: str | None = None
    models: list[InputModel] = Field(min_length=1)
    parameters: dict[str, Setting] = {}
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    out_dtype: Literal["float32", "float16", "bfloat16"] | None = None
    tokenizer_source: str | None = Field(None, description="`base`, or one input's model spec: whose vocabulary "
                                         "the output keeps when the inputs' vocabularies differ")
    chat_template: str | None = None
    lines: Lines | None = Field(None, description="tuna: LiNeS applied to the merged task vector")
    seed: int = Field(0, description="tuna: seeds DARE's random drops (mergekit: --random-seed)")
    output: Literal["model", "adapter"] = Field("model", description="tuna: `adapter` combines LoRA adapters "
                                                "of one base into one adapter")
    shard_size: str = Field("5GB", description="tuna: the largest safetensors shard written (mergekit's "
                            "--out-shard-size)")


def load_merge_config(source: str | Path | dict) -> MergeConfig:
    """A config file path or an already-parsed dict, validated; every problem is one UserError line."""
    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source)
        if not path.is_file():
            raise UserError(f"merge config not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{path} is not valid YAML: {exc}") from None
    try:
        return MergeConfig.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "config"
        raise UserError(f"invalid merge config: {where}: {error['msg']}") from None


def evaluate(setting: Setting, tensor: str, position: float) -> Any:
    """A parameter's value for one tensor, `position` being its layer's place in [0, 1] (mergekit's rule:
    a list of numbers is a gradient interpolated at `position`; conditions take the first whose filter
    is absent, `*`, or a substring of the tensor name)."""
    if isinstance(setting, dict):
        setting = [setting]
    if not isinstance(setting, list):
        return setting
    if not setting:
        return None
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in setting):
        scaled = position * (len(setting) - 1)
        low = int(scaled)
        high = min(len(setting) - 1, low + 1)
        return (1 - (scaled - low)) * setting[low] + (scaled - low) * setting[high]
    if all(isinstance(v, (int, float, bool, str)) for v in setting):
        return setting[int(position * (len(setting) - 1))]
    for condition in setting:
        if not isinstance(condition, dict) or "value" not in condition:
            raise UserError(f"a parameter condition must be {{filter, value}}, got {condition!r}")
        pattern = condition.get("filter")
        if pattern in (None, "*") or pattern in tensor:
            return evaluate(condition["value"], tensor, position)
    return None
