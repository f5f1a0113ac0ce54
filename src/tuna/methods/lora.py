"""LoRA and its PEFT variants: low-rank adapters saved in the standard PEFT format.

Everything here is PEFT's own implementation, selected by config: DoRA and rsLoRA by flag, the
PiSSA / EVA / CorDA initialisations by `lora.init`, and LoRA+'s separate learning rate for B by
`lora.plus_ratio` (PEFT's grouping of the parameters, read back as learning-rate multipliers).
PiSSA and CorDA move the principal part of each weight into the adapter, so the base changes; the
saved adapter is converted back (rank 2r) so it applies to the original, unmodified base model.
The one change to PEFT's modules: each plain LoRA layer's dropout is folded into its `A`
(`lean_dropout`), the same arithmetic without the copies of the input it would keep.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from tuna.errors import UserError
from tuna.methods.base import Method
from tuna.methods.lean_dropout import fold_lora_dropout
from tuna.sections import Section


class LoraKnobs(Section):
    r: int = Field(16, ge=1, le=4096)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    init: Literal["default", "gaussian", "pissa", "eva", "corda_kpm", "corda_ipm"] = Field(
        "default", description="adapter initialisation (PEFT): default is A random, B zero")
    plus_ratio: float | None = Field(None, ge=1.0, description="LoRA+: learning rate of B over that of A (paper: 16)")
    calibration_batches: int = Field(8, ge=1, description="micro-batches EVA and CorDA read to initialise")
    freeze_a: bool = Field(False, description="LoRA-FA: A keeps its random initialisation and only B trains")

    @model_validator(mode="after")
    def _freeze_a_needs_a_random_a(self) -> "LoraKnobs":
        if self.freeze_a and self.init not in ("default", "gaussian"):
            raise ValueError(f"lora.freeze_a (LoRA-FA) keeps a random A frozen; lora.init: {self.init} is not random")
        return self


PEFT_INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "eva": "eva",
             "corda_kpm": "corda", "corda_ipm": "corda"}
CHANGES_BASE = ("pissa", "corda_kpm", "corda_ipm")
READS_DATA = ("eva", "corda_kpm", "corda_ipm")


def targeted_linears(model, target_modules) -> dict[str, torch.nn.Linear]:
    """The linear modules LoRA will wrap; unknown names are an error listing the real ones."""
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name}
    if target_modules == "all-linear":
        output = model.get_output_embeddings()
        return {name: m for name, m in linears.items() if m is not output}
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = sorted(set(target_modules) - present)
    if missing:
        names = sorted({name.rsplit(".", 1)[-1] for name in linears})
        raise UserError(f"lora.target_modules {missing} not in the model; its linear modules are: {', '.join(names)}")
    return {name: m for name, m in linears.items() if name.rsplit(".", 1)[-1] in target_modules}


def peft_config(model, cfg: LoraKnobs, **variant):
    targets = targeted_linears(model, cfg.target_modules)
    # targets can hold no linear at all (LoRA on embed_tokens only): then there is no linear to check
    smallest = min((min(m.in_features, m.out_features) for m in targets.values()), default=None)
    if smallest is not None and cfg.r > smallest:
        raise UserError(f"lora.r is {cfg.r} but the smallest targeted layer has dimension {smallest}; "
                        f"choose lora.r <= {smallest}")
    extra, target_modules = {}, cfg.target_modules
    if cfg.init == "eva":
        from peft import EvaConfig

        extra["eva_config"] = EvaConfig()
    elif cfg.init.startswith("corda"):
        from peft.tuners.lora.config import CordaConfig

        extra["corda_config"] = CordaConfig(corda_method=cfg.init.removeprefix("corda_"), verbose=False)
        # preprocess_corda matches names itself and knows no "all-linear": hand it the names.
        target_modules = sorted({name.rsplit(".", 1)[-1] for name in targets})
    from peft import LoraConfig  # peft loads on use: importing the registry (config validation) stays light

    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=target_modules,
                      init_lora_weights=PEFT_INIT[cfg.init], task_type="CAUSAL_LM", **extra, **variant)


@torch.no_grad()
def run_forward(model, batches: list[dict]) -> None:
    """Each example alone and without its padding: CorDA's covariance hook takes a batch of one
    (it squeezes dim 0 and builds X^T X), and padding would add rows that are not the data."""
    for batch in batches:
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
            keep = mask.bool()
            model(input_ids=ids[keep].unsqueeze(0), attention_mask=mask[keep].unsqueeze(0))


class Lora(Method):
    name = "lora"
    summary = "low-rank adapters on linear layers (PEFT); inits pissa|eva|corda_*, LoRA+ by ratio"
    paper = "LoRA: Low-Rank Adaptation of Large Language Models"
    default_lr = 2e-4
    sections = {"lora": LoraKnobs}
    shardable = True
    saves_adapter = True
    variant: ClassVar[dict] = {}  # PEFT LoraConfig flags that make the variant (DoRA, rsLoRA)

    def __init__(self, **knobs):
        super().__init__(**knobs)
        self.initial_adapter: Path | None = None  # the adapter as initialised, when the init changed the base
        self._workdir: tempfile.TemporaryDirectory | None = None  # holds it; removed with this instance

    def prepare(self, model, calibration=None):
        return self.wrap(model, calibration)

    def wrap(self, model, calibration=None, **extra):
        """The model with PEFT's LoRA injected; `extra` adds LoraConfig settings (LongLoRA's modules_to_save)."""
        cfg = self.lora
        config = peft_config(model, cfg, **self.variant, **extra)
        if cfg.init in READS_DATA and calibration is None:
            raise UserError(f"lora.init: {cfg.init} needs calibration data")
        if cfg.init.startswith("corda"):
            from peft.tuners.lora.corda import preprocess_corda

            # KPM keeps what the model knows: its covariance comes from general text. IPM previews the task.
            batches = (calibration.general if cfg.init == "corda_kpm" else calibration.task)(cfg.calibration_batches)
            preprocess_corda(model, config, run_model=lambda: run_forward(model, batches))
        from peft import get_peft_model

        model = get_peft_model(model, config)
        if cfg.init == "eva":
            from peft import initialize_lora_eva_weights

            initialize_lora_eva_weights(model, dataloader=calibration.task(cfg.calibration_batches),
                                        show_progress_bar=False)
        fold_lora_dropout(model)
        if cfg.init in CHANGES_BASE:
            # PEFT's recipe: keep the initial adapter, flagged as plain LoRA, for the conversion at save time.
            # CorDA's settings are spent; left in, every load of the saved adapter warns that they are ignored.
            model.peft_config["default"].init_lora_weights = True
            model.peft_config["default"].corda_config = None
            self._workdir = tempfile.TemporaryDirectory(prefix="tuna-lora-init-")
            self.initial_adapter = Path(self._workdir.name) / "lora_init"
            model.save_pretrained(self.initial_adapter)
        if cfg.freeze_a:  # LoRA-FA: the down-projection stays as initialised, so only B (and its moments) train
            for name, p in model.named_parameters():
                if ".lora_A." in name:
                    p.requires_grad_(False)
        return model

    def save_final(self, model, out):
        initial = self.initial_adapter
        model.save_pretrained(out, path_initial_model_for_weight_conversion=str(initial) if initial else None)

    def lr_scales(self, model) -> dict[str, float]:
        """LoRA+: B (and PEFT's other group-B tensors) learn `lora.plus_ratio` times faster than A.

        PEFT's grouping is read with lr 1, so each group's lr is a multiplier. Its embedding group takes
        an absolute lr (1e-6 by default) rather than a multiple: given 1 here, embedding adapters train
        at the base rate instead of at lr * 1e-6.
        """
        ratio = self.lora.plus_ratio
        if not ratio:
            return {}
        from peft.optimizers import create_loraplus_optimizer

        grouped = create_loraplus_optimizer(model, torch.optim.SGD, lr=1.0, loraplus_lr_ratio=ratio,
                                            loraplus_lr_embedding=1.0)
        ids = {id(p): name for name, p in model.named_parameters()}
        return {ids[id(p)]: group["lr"] for group in grouped.param_groups for p in group["params"]}

    def adapter_off_is_base(self) -> bool:
        return self.lora.init not in CHANGES_BASE


class Dora(Lora):
    name = "dora"
    summary = "LoRA with the weight split into magnitude and direction (PEFT use_dora)"
    paper = "DoRA: Weight-Decomposed Low-Rank Adaptation"
    variant = {"use_dora": True}


class Rslora(Lora):
    name = "rslora"
    summary = "LoRA scaled by alpha/sqrt(r) instead of alpha/r (PEFT use_rslora)"
    paper = "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA"
    variant = {"use_rslora": True}
