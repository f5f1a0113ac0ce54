"""The run recipe: one pydantic schema for every key a YAML config may hold.

Keys are nouns grouped by concern (`model.*`, `data.*`, `method` + `<method>.*`, `train.*`, `eval.*`).
An unknown key is an error naming the closest valid key; knobs of a method other than the selected
one are an error too, so a typo never silently does nothing.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from tuna.errors import UserError
from tuna.models.rope import RopeScaling
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
    batching: Literal["padded", "sorted", "packed"] = Field("padded", description="padded: shuffled padded batches; "
                                                            "sorted: similar lengths per batch, batch order shuffled; "
                                                            "packed: examples packed into rows of max_tokens")
    packing: bool = Field(False, description="shorthand for batching: packed")
    pause_tokens: PauseConfig | None = Field(None, description="Pause-tuning: pause markers between segments of long inputs")

    @model_validator(mode="after")
    def _check_split(self) -> "DataConfig":
        if isinstance(self.eval_split, float) and not 0.0 <= self.eval_split < 1.0:
            raise ValueError("eval_split must be a fraction in [0, 1) or a file path")
        if self.packing and self.batching != "packed":
            if "batching" in self.model_fields_set:
                raise ValueError(f"data.packing: true contradicts data.batching: {self.batching}; set only one")
            self.batching = "packed"  # validates again, now consistent
        return self


class FreezeConfig(Section):
    trainable_layers: int = Field(2, ge=1, description="how many of the top decoder layers train")


class LoraConfig(Section):
    r: int = Field(16, ge=1, le=4096)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    init: Literal["default", "gaussian", "pissa", "eva", "corda_kpm", "corda_ipm"] = Field(
        "default", description="adapter initialisation (PEFT): default is A random, B zero")
    plus_ratio: float | None = Field(None, ge=1.0, description="LoRA+: learning rate of B over that of A (paper: 16)")
    calibration_batches: int = Field(8, ge=1, description="micro-batches EVA and CorDA read to initialise")


class SparseConfig(Section):
    density: float = Field(0.01, gt=0.0, le=1.0, description="fraction of the decoder layers' weight entries that train")
    calibration_batches: int = Field(8, ge=1, description="micro-batches whose gradient chooses the entries")


class S2ftConfig(Section):
    heads_per_layer: int = Field(2, ge=0, description="attention heads per block whose output-projection columns train")
    ffn_channels: int = Field(64, ge=0, description="FFN channels per block whose down-projection columns train")
    seed: int = Field(0, description="seeds the choice of heads and channels")

    @model_validator(mode="after")
    def _something_trains(self) -> "S2ftConfig":
        if self.heads_per_layer == 0 and self.ffn_channels == 0:
            raise ValueError("s2ft.heads_per_layer and s2ft.ffn_channels are both 0: nothing would train")
        return self


class LongLoraConfig(Section):
    group_size_ratio: float = Field(0.25, gt=0.0, le=1.0, description="S2-Attn group length over the sequence length")


class ChainLoraConfig(Section):
    rounds: int = Field(3, ge=1, description="LoRA rounds; after each, the adapter merges into the base and restarts")


class HftConfig(Section):
    rounds: int = Field(4, ge=1, description="how often the trained half is re-drawn over the run")
    seed: int = Field(0, description="seeds the half chosen in each round")


class AnchoredSftConfig(Section):
    kl_beta: float = Field(0.05, ge=0.0, description="weight of KL(policy || starting model) added to the DFT loss")


class DpoConfig(Section):
    beta: float = Field(0.1, gt=0.0, description="strength of the pull towards the starting model (DPO's beta, IPO's tau)")
    loss: Literal["sigmoid", "ipo", "hinge"] = Field("sigmoid", description="sigmoid (DPO), ipo (squared distance to "
                                                     "1/(2 beta)) or hinge (SLiC: max(0, 1 - beta h))")


class SimpoConfig(Section):
    beta: float = Field(2.0, gt=0.0, description="scale of the length-normalised reward")
    gamma: float = Field(1.0, ge=0.0, description="target reward margin (gamma/beta = 0.5 by default)")


class OrpoConfig(Section):
    beta: float = Field(0.1, ge=0.0, description="weight of the odds-ratio term added to the chosen NLL (lambda in the paper)")


class RewardKnobs(Section):
    """What the reward functions read (`objectives.rewards`): GRPO's rewards and S3FT's judge."""

    answer_pattern: str | None = Field(None, description="exact_match compares this regex's first group (unset: "
                                       "the whole completion)")
    reward_pattern: str = Field(r"^\s*-?\d+\s*$", description="the `regex` reward: 1 where this matches")
    length_target: int = Field(200, ge=1, description="length_penalty: characters allowed before the penalty")
    max_reward_errors: int = Field(10, ge=0, description="reward failures (raise / non-number) tolerated before stopping")


class GrpoConfig(RewardKnobs):
    group_size: int = Field(4, ge=2, description="completions sampled per prompt; advantages are normalised within them")
    max_new_tokens: int = Field(32, ge=1, description="longest sampled completion")
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    kl_beta: float = Field(0.04, ge=0.0, description="weight of the per-token KL to the starting model (paper: 0.04)")
    clip: float = Field(0.2, gt=0.0, description="ratio clip epsilon")
    rewards: list[str] = Field(["exact_match"], min_length=1, description="built-in reward names or module:function")
    reward_weights: list[float] | None = Field(None, description="one weight per reward; unset: all 1")

    @model_validator(mode="after")
    def _one_weight_per_reward(self) -> "GrpoConfig":
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ValueError(f"grpo.reward_weights has {len(self.reward_weights)} values for {len(self.rewards)} rewards")
        return self


class SelfSftConfig(RewardKnobs):
    judge: list[str] = Field(["exact_match"], min_length=1, description="reward functions (built-in names or "
                             "module:function) that judge the model's own response; their sum is its score")
    accept_at: float = Field(1.0, description="a response whose score reaches this replaces the gold response")
    max_new_tokens: int = Field(256, ge=1, description="longest generated response")


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
    lr: float | None = Field(None, gt=0, description="peak learning rate; unset takes the method's default")
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


class EvalConfig(Section):
    every: int = Field(100, ge=0, description="held-out loss every N steps (0: only at the end)")
    batch_size: int = Field(8, ge=1)


# The knob sections each method reads; a section set for any other method is an error.
SECTIONS_OF_METHOD = {"full": (), "freeze": ("freeze",), "lora": ("lora",), "dora": ("lora",), "rslora": ("lora",),
                      "hft": ("hft",), "sparse": ("sparse",), "s2ft": ("s2ft",), "chain_lora": ("lora", "chain_lora"),
                      "longlora": ("lora", "longlora")}
METHOD_SECTIONS = ("freeze", "lora", "hft", "sparse", "s2ft", "chain_lora", "longlora")
OBJECTIVE_SECTIONS = ("anchored_sft", "dpo", "simpo", "orpo", "grpo", "self_sft")  # an objective's knob section shares its name
PAIR_OBJECTIVES = ("dpo", "simpo", "orpo")  # trained on preference pairs
MethodName = Literal["full", "freeze", "lora", "dora", "rslora", "hft", "sparse", "s2ft", "chain_lora", "longlora"]


class Recipe(Section):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: MethodName = "lora"
    freeze: FreezeConfig = FreezeConfig()
    lora: LoraConfig = LoraConfig()
    hft: HftConfig = HftConfig()
    sparse: SparseConfig = SparseConfig()
    s2ft: S2ftConfig = S2ftConfig()
    chain_lora: ChainLoraConfig = ChainLoraConfig()
    longlora: LongLoraConfig = LongLoraConfig()
    objective: Literal["sft", "dft", "anchored_sft", "dpo", "simpo", "orpo", "grpo", "self_sft"] = "sft"
    anchored_sft: AnchoredSftConfig = AnchoredSftConfig()
    dpo: DpoConfig = DpoConfig()
    simpo: SimpoConfig = SimpoConfig()
    orpo: OrpoConfig = OrpoConfig()
    grpo: GrpoConfig = GrpoConfig()
    self_sft: SelfSftConfig = SelfSftConfig()
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

    @model_validator(mode="after")
    def _check_combinations(self) -> "Recipe":
        own = SECTIONS_OF_METHOD[self.method]
        stray = [s for s in METHOD_SECTIONS if s in self.model_fields_set and s not in own]
        if stray:
            users = [m for m, sections in SECTIONS_OF_METHOD.items() if stray[0] in sections]
            raise ValueError(f"`{stray[0]}.*` knobs are set but method is `{self.method}`; remove them or set "
                             f"method: {' or '.join(users)}")
        stray = [s for s in OBJECTIVE_SECTIONS if s in self.model_fields_set and s != self.objective]
        if stray:
            raise ValueError(f"`{stray[0]}.*` knobs are set but objective is `{self.objective}`; remove them or set "
                             f"objective: {stray[0]}")
        if self.objective in PAIR_OBJECTIVES:
            self._check_pair_training()
        elif self.data.format == "preference":
            raise ValueError(f"data.format: preference holds pairs for objective {' or '.join(PAIR_OBJECTIVES)}, "
                             f"not {self.objective}")
        if self.objective == "grpo" and (self.data.batching == "packed" or self.data.mask_thought_ratio > 0):
            raise ValueError("objective grpo trains on its own sampled completions; data.batching: packed and "
                             "data.mask_thought_ratio do not apply")
        if self.train.loss_chunk_tokens is not None and self.objective not in ("sft", "self_sft"):
            raise ValueError(f"train.loss_chunk_tokens applies to objectives sft and self_sft, not {self.objective}")
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

    def _check_pair_training(self) -> None:
        """Refuse the knobs that make no sense for whole preference pairs, rather than ignore them."""
        unsupported = {"data.batching: packed": self.data.batching == "packed",
                       "data.train_on: all": self.data.train_on == "all",
                       "data.mask_thought_ratio": self.data.mask_thought_ratio > 0,
                       "data.pause_tokens": self.data.pause_tokens is not None,
                       "train.loss_weighting: sequence": self.train.loss_weighting == "sequence"}
        named = [knob for knob, is_set in unsupported.items() if is_set]
        if named:
            raise ValueError(f"{named[0]} does not apply to objective {self.objective}, which weighs whole preference "
                             "pairs (answer tokens only, padded batches); remove it")
        if self.data.format not in ("auto", "preference"):
            raise ValueError(f"objective {self.objective} trains on preference pairs; data.format must be auto or "
                             f"preference, not {self.data.format}")

    def to_yaml(self) -> str:
        """The resolved config, with only the selected method's section."""
        skip = {s for s in METHOD_SECTIONS if s not in SECTIONS_OF_METHOD[self.method]}
        skip |= {s for s in OBJECTIVE_SECTIONS if s != self.objective}
        return yaml.safe_dump(self.model_dump(exclude=skip, mode="json"), sort_keys=False)


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
    try:
        return Recipe.model_validate(raw)
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
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)
