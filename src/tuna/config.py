"""The run recipe: one pydantic schema for every key a YAML config may hold.

Keys are nouns grouped by concern (`model.*`, `data.*`, `method` + `<method>.*`, `objective` +
`<objective>.*`, `train.*`, `eval.*`). The method and objective sections are not listed here: each
component declares its own knob model, and `recipe_model` builds the schema from the registries.
An unknown key is an error naming the closest valid key; knobs of a method or objective other than
the selected one are an error too, so a typo never silently does nothing.
"""
from __future__ import annotations

import difflib
import functools
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, model_validator

from tuna.data.formats import RECORD_KEYS
from tuna.data.mix import Source
from tuna.errors import UserError
from tuna.migrate import tuna_keys
from tuna.methods import REGISTRY as METHODS
from tuna.models.rope import RopeScaling
from tuna.objectives import REGISTRY as OBJECTIVES
from tuna.sections import Section

DEFAULT_MODEL = "smollm2-135m"


class ModelConfig(Section):
    name: str = Field(DEFAULT_MODEL, description="alias, local HF directory, .gguf file, cached hub id or run directory")
    rope_scaling: RopeScaling | None = Field(None, description="extend the context window by rescaling RoPE")


class PauseConfig(Section):
    every: int = Field(256, ge=8, description="insert a pause after the first paragraph break past every N tokens of input")
    text: str = Field("<pause>", min_length=1, description="the pause marker inserted between segments")


class DataConfig(Section):
    path: str | None = Field(None, description="JSONL, JSON, Parquet, CSV file or a datasets save_to_disk directory")
    format: Literal["auto", "text", "instruction", "prompt_completion", "messages", "preference"] = "auto"
    train_on: Literal["completion", "all"] = "completion"
    max_tokens: int = Field(1024, ge=8, description="longest rendered example, in tokens")
    overflow: Literal["truncate", "drop"] = "truncate"
    eval_split: float | str = Field(0.1, description="held-out fraction in [0, 1), or a file of its own")
    mask_thought_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="Masked Thought: fraction of response "
                                      "input tokens replaced by a mask token (labels keep the originals)")
    batching: Literal["auto", "padded", "sorted", "packed"] = Field(
        "auto", description="auto: packed where that is exact (single sequences, a method that keeps packed examples "
        "apart), one row per micro-batch holding about micro_batch_size examples, else padded; padded: shuffled "
        "padded batches; sorted: similar lengths per batch, batch order shuffled; packed: micro_batch_size rows "
        "of max_tokens, examples packed into them")
    packing: bool = Field(False, description="shorthand for batching: packed")
    pause_tokens: PauseConfig | None = Field(None, description="Pause-tuning: pause markers between segments of long inputs")
    drop_question: bool = Field(False, description="QFFT: the training split loses its questions and trains on the "
                                "responses alone (the held-out split keeps them)")
    prompt_variants: str | None = Field(None, description="PAFT: a file of paraphrased instructions; each step, each "
                                        "training example takes one of them (or its own) at random")
    columns: dict[str, str] | None = Field(None, description="the file's column for each of tuna's record keys, "
                                           "e.g. {messages: conversation, output: answer}")
    sources: list[Source] | None = Field(None, min_length=1, description="several data sets mixed, each "
                                         "{path, weight | count, columns} (instead of data.path)")

    @model_validator(mode="after")
    def _check_split(self) -> "DataConfig":
        if self.drop_question and self.prompt_variants is not None:
            raise ValueError("data.drop_question removes the instructions that data.prompt_variants paraphrases; "
                             "choose one")
        if self.sources is not None and self.path is not None:
            raise ValueError("set data.path or data.sources, not both")
        unknown = sorted(set(self.columns or {}).union(*[s.columns or {} for s in self.sources or []]) - RECORD_KEYS)
        if unknown:
            raise ValueError(f"data.columns maps {unknown[0]!r}, which is not a record key tuna reads "
                             f"({', '.join(sorted(RECORD_KEYS))})")
        if isinstance(self.eval_split, float) and not 0.0 <= self.eval_split < 1.0:
            raise ValueError("eval_split must be a fraction in [0, 1) or a file path")
        if self.packing and self.batching != "packed":
            if "batching" in self.model_fields_set:
                raise ValueError(f"data.packing: true contradicts data.batching: {self.batching}; set only one")
            self.batching = "packed"  # validates again, now consistent
        return self


class OptimConfig(Section):
    layer_decay: float | None = Field(None, gt=0.0, le=1.0, description="learning rate x decay^(depth from the top)")
    clip_per_component: bool = Field(False, description="clip each module's gradient norm to train.max_grad_norm "
                                     "on its own instead of the global norm")
    offload: bool = Field(False, description="keep AdamW's states (and its update) in CPU memory")
    eight_bit: bool = Field(False, description="AdamW with block-wise 8-bit states (bitsandbytes AdamW8bit): 2 bytes "
                            "of state per trained parameter instead of 8")


class InitConfig(Section):
    reinit_top_layers: int = Field(0, ge=0, description="re-initialise the top k decoder layers before training")


class TrainConfig(Section):
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; when unset, `epochs` decides")
    epochs: float = Field(1.0, gt=0)
    micro_batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float | None = Field(None, gt=0, le=1.0, description="peak learning rate, at most 1 (AdamW steps each weight "
                             "by about lr); unset takes the method's default")
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    gradient_checkpointing: bool = False
    offload_activations: bool = Field(False, description="keep the tensors saved for backward in CPU memory")
    compile: bool = Field(False, description="torch.compile each decoder block (the first steps pay the compile time)")
    loss_weighting: Literal["token", "sequence"] = Field("token", description="token: every completion token of the "
                                                         "step counts equally; sequence: every sequence counts equally")
    neftune_alpha: float | None = Field(None, gt=0, description="NEFTune: uniform noise of alpha/sqrt(L*d) on the "
                                        "input embeddings while training (paper: 5)")
    seed: int = 0
    save_every: int = Field(100, ge=0, description="checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = Field(2, ge=1)
    loss_chunk_tokens: int | None = Field(None, ge=1, description="sft/self_sft: run the output head and "
                                          "cross-entropy on this many positions at a time, never holding all logits")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field([], description="experiment trackers fed the "
                                                                       "metrics.jsonl records (each needs its package)")
    distributed: Literal["ddp", "fsdp"] = Field("ddp", description="with several processes (--nproc, torchrun): ddp "
                                                "keeps a whole model on each, fsdp shards it (FSDP2)")
    cpu_threads: int | None = Field(None, ge=1, description="intra-op threads on the CPU; unset: the CPUs this "
                                    "process may use (affinity, cgroup quota), unless OMP_NUM_THREADS is set")
    release_memory: bool = Field(False, description="CPU: freed tensors over 1 MiB go back to the OS at once "
                                 "(glibc): a lower peak RSS (-43% on a LoRA step), about 20% fewer tokens/s")


class EvalConfig(Section):
    every: int = Field(100, ge=0, description="held-out loss every N steps (0: only at the end)")
    batch_size: int = Field(8, ge=1)


FIXED_SECTIONS = ("model", "data", "init", "optim", "train", "eval")


class Recipe(Section):
    """The sections every run has. The selected method's and objective's own sections are added by
    `recipe_model` from the registries: one field per section key, named as in the YAML."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: str = "lora"
    objective: str = "sft"
    init: InitConfig = InitConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output_dir: str | None = Field(None, description="run directory; unset: runs/<method>-<time>")

    @model_validator(mode="before")
    @classmethod
    def _model_shorthand(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("model"), str):
            values = {**values, "model": {"name": values["model"]}}
        return values

    @property
    def batching(self) -> str:
        """`data.batching` with `auto` resolved: `packed_step` (one packed row per micro-batch, sized to hold about
        micro_batch_size examples) where packing is exact for this objective's data and this method, else `padded`."""
        if self.data.batching != "auto":
            return self.data.batching
        return "packed_step" if OBJECTIVES[self.objective].kind.packs and METHODS[self.method].packs else "padded"

    @model_validator(mode="after")
    def _check_combinations(self) -> "Recipe":
        method, objective = METHODS[self.method], OBJECTIVES[self.objective]
        for key in sorted(self.model_fields_set & set(registered_sections()) - sections_read_by(self.method, self.objective)):
            readers = [name for name, m in METHODS.items() if key in m.sections]
            if readers:
                raise ValueError(f"`{key}.*` knobs are set but method is `{self.method}`; remove them or set "
                                 f"method: {' or '.join(readers)}")
            raise ValueError(f"`{key}.*` knobs are set but objective is `{self.objective}`; remove them or set "
                             f"objective: {key}")
        refusal = objective.kind.refuse(self.data, self.train)
        if refusal:
            raise ValueError(refusal.format(objective=self.objective))
        if self.data.batching == "packed" and not method.packs:
            raise ValueError(f"method {self.method} cannot keep packed examples apart; use data.batching: padded or sorted")
        if self.train.loss_chunk_tokens is not None and not method.plain_forward:
            raise ValueError(f"train.loss_chunk_tokens runs the decoder and the head apart, which method {self.method} "
                             "does not allow; unset it")
        if self.train.loss_chunk_tokens is not None and not objective.chunked_loss:
            chunked = [name for name, o in OBJECTIVES.items() if o.chunked_loss]
            raise ValueError(f"train.loss_chunk_tokens applies to objectives {' and '.join(chunked)}, not {self.objective}")
        for knob in ("offload", "eight_bit"):
            if getattr(self.optim, knob) and self.train.distributed == "fsdp":
                raise ValueError(f"optim.{knob} works with one process or train.distributed: ddp, not fsdp")
        if self.optim.offload and self.optim.eight_bit:
            raise ValueError("optim.offload and optim.eight_bit are two different optimizers; choose one")
        if self.optim.clip_per_component and self.train.max_grad_norm is None:
            raise ValueError("optim.clip_per_component clips to train.max_grad_norm, which is unset")
        if self.data.format == "text" and "train_on" in self.data.model_fields_set and self.data.train_on == "completion":
            raise ValueError("data.train_on: completion needs prompts and completions; plain `text` data trains on all tokens")
        return self

    def to_yaml(self) -> str:
        """The resolved config, with only the selected method's and objective's sections."""
        data = self.model_dump(mode="json")
        method_sections = list(METHODS[self.method].sections)
        objective_sections = sorted(sections_read_by(self.method, self.objective) - set(method_sections))
        order = ["model", "data", "method", *method_sections, "objective", *objective_sections,
                 "init", "optim", "train", "eval", "output_dir"]
        return yaml.safe_dump({key: data[key] for key in order}, sort_keys=False)


def sections_read_by(method: str, objective: str) -> set[str]:
    """The method and objective sections that this method and this objective read (unknown names read none)."""
    sections = set(METHODS[method].sections) if method in METHODS else set()
    if objective in OBJECTIVES and OBJECTIVES[objective].knobs:
        sections.add(objective)
    return sections


def registered_sections() -> dict[str, type[Section]]:
    """Every section a registered method or objective reads, by config key. Two components that read one key
    must read it with the same knob model (lora, dora, chain_lora, ... share `lora`)."""
    sections: dict[str, type[Section]] = {}
    owners = [(m.name, m.sections) for m in METHODS.values()]
    owners += [(o.name, {o.name: o.knobs}) for o in OBJECTIVES.values() if o.knobs]
    for owner, declared in owners:
        for key, model in declared.items():
            if key in (*FIXED_SECTIONS, "method", "objective", "output_dir"):
                raise TypeError(f"{owner} declares the section `{key}`, which is a fixed part of the config")
            if sections.setdefault(key, model) is not model:
                raise TypeError(f"{owner} declares section `{key}` with another knob model than its other readers")
    return sections


@functools.cache
def _recipe_model(methods: tuple, objectives: tuple, sections: tuple) -> type[Recipe]:
    fields = {key: (model, Field(default_factory=model)) for key, model in sections}
    return create_model("Recipe", __base__=Recipe, method=(Literal[methods], "lora"),
                        objective=(Literal[objectives], "sft"), **fields)


def recipe_model() -> type[Recipe]:
    """The Recipe schema of the methods and objectives registered now."""
    return _recipe_model(tuple(METHODS), tuple(OBJECTIVES), tuple(registered_sections().items()))


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> Recipe:
    """Read a YAML config (or none), apply `key=value` overrides, and validate."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise UserError(f"{path} must hold a mapping of config keys, not {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item)
    raw, notes = tuna_keys(raw)
    for note in notes:
        print(f"tuna: config: {note}", file=sys.stderr)
    return validate_recipe(raw)


def apply_override(raw: dict, item: str) -> None:
    """`a.b=c` sets raw['a']['b'] to c, parsed as a YAML scalar."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UserError(f"--set expects key=value, got {item!r}")
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if isinstance(node.get(part), str) and part == "model":
            node[part] = {"name": node[part]}
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: `{part}` is not a section")
    node[parts[-1]] = yaml.safe_load(value) if value else value


def validate_recipe(raw: dict) -> Recipe:
    """The Recipe of `raw` (other tools' key names read as tuna's, `migrate`), or one UserError line."""
    try:
        return recipe_model().model_validate(tuna_keys(raw)[0])
    except ValidationError as exc:
        raise UserError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
        key = ".".join(loc) or "config"
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(loc[:-1])
            close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
            hint = f"; did you mean `{'.'.join(loc[:-1] + close)}`?" if close else f"; valid keys here: {', '.join(valid)}"
            lines.append(f"unknown config key `{key}`{hint}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(msg if key == "config" else f"{key}: {msg}")
    return "invalid config: " + "; ".join(lines)


def _valid_keys(loc: list[str]) -> list[str]:
    model: type[BaseModel] = recipe_model()
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def config_lines(recipe: Recipe) -> list[str]:
    """Every key of `recipe` (its method's and objective's sections included) as `key: value  # meaning`,
    with `(default ...)` where the recipe sets something else."""
    sections = ["model", "data", "method", "objective", *sorted(sections_read_by(recipe.method, recipe.objective)),
                "init", "optim", "train", "eval", "output_dir"]
    lines: list[str] = []
    for name in sections:
        value = getattr(recipe, name, None)
        if isinstance(value, BaseModel):
            lines.append(f"{name}:")
            lines += _field_lines(value, "  ")
        else:
            lines.append(_line(name, value, type(recipe).model_fields[name], ""))
    return lines


def _field_lines(section: BaseModel, indent: str) -> list[str]:
    lines = []
    for key, field in type(section).model_fields.items():
        value = getattr(section, key)
        if isinstance(value, BaseModel):
            lines.append(f"{indent}{key}:")
            lines += _field_lines(value, indent + "  ")
        else:
            lines.append(_line(key, value, field, indent))
    return lines


def _line(key: str, value, field, indent: str) -> str:
    text = f"{indent}{key}: {yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix('...').strip()}"
    notes = [field.description] if field.description else []
    default = field.get_default(call_default_factory=True)
    if value != default and not isinstance(default, BaseModel):
        notes.append(f"default {default!r}")
    return text + (f"  # {'; '.join(notes)}" if notes else "")
