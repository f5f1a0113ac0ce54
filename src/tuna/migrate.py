"""Config keys other tools use, read as tuna's: a transformers, TRL or Axolotl config mostly works as it is.

Each foreign key maps to one tuna key (`learning_rate` -> `train.lr`); `load_recipe` says on stderr
what it read as what. A foreign key and its tuna key both set is refused, and so is a foreign value
tuna cannot honour (Axolotl's `adapter: qlora`).
"""
from __future__ import annotations

from tuna.errors import UserError

TRANSFORMERS, AXOLOTL = "transformers, TRL", "Axolotl"
FOREIGN = {  # foreign key (at the top level, or inside `train`) -> (tuna key, whose name it is)
    "learning_rate": ("train.lr", f"{TRANSFORMERS}, {AXOLOTL}"),
    "gradient_accumulation_steps": ("train.grad_accum", f"{TRANSFORMERS}, {AXOLOTL}"),
    "per_device_train_batch_size": ("train.micro_batch_size", TRANSFORMERS),
    "micro_batch_size": ("train.micro_batch_size", AXOLOTL),
    "num_train_epochs": ("train.epochs", TRANSFORMERS),
    "num_epochs": ("train.epochs", AXOLOTL),
    "max_steps": ("train.max_steps", f"{TRANSFORMERS}, {AXOLOTL}"),
    "warmup_ratio": ("train.warmup_ratio", f"{TRANSFORMERS}, {AXOLOTL}"),
    "weight_decay": ("train.weight_decay", f"{TRANSFORMERS}, {AXOLOTL}"),
    "lr_scheduler_type": ("train.schedule", TRANSFORMERS),
    "lr_scheduler": ("train.schedule", AXOLOTL),
    "max_grad_norm": ("train.max_grad_norm", f"{TRANSFORMERS}, {AXOLOTL}"),
    "gradient_checkpointing": ("train.gradient_checkpointing", f"{TRANSFORMERS}, {AXOLOTL}"),
    "seed": ("train.seed", f"{TRANSFORMERS}, {AXOLOTL}"),
    "lora_r": ("lora.r", AXOLOTL),
    "lora_alpha": ("lora.alpha", AXOLOTL),
    "lora_dropout": ("lora.dropout", AXOLOTL),
    "lora_target_modules": ("lora.target_modules", AXOLOTL),
    "adapter": ("method", AXOLOTL),
    "base_model": ("model.name", AXOLOTL),
    "model_name_or_path": ("model.name", TRANSFORMERS),
    "sequence_len": ("data.max_tokens", AXOLOTL),
    "max_seq_length": ("data.max_tokens", "TRL"),
    "max_length": ("data.max_tokens", "TRL"),
    "sample_packing": ("data.packing", AXOLOTL),
    "packing": ("data.packing", "TRL"),
    "val_set_size": ("data.eval_split", AXOLOTL),
}
IN_TRAIN = {"learning_rate", "gradient_accumulation_steps", "per_device_train_batch_size", "num_train_epochs",
            "num_epochs"}  # names people also write inside tuna's own `train` section


def tuna_keys(raw: dict) -> tuple[dict, list[str]]:
    """`raw` with foreign keys moved to tuna's, and one note per key moved."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    notes = []
    found = [(None, k) for k in list(raw) if k in FOREIGN]
    if isinstance(raw.get("train"), dict):
        found += [("train", k) for k in list(raw["train"]) if k in IN_TRAIN]
    for section, key in found:
        value = (raw[section] if section else raw).pop(key)
        target, whose = FOREIGN[key]
        if key == "adapter" and value != "lora":
            raise UserError(f"adapter: {value} ({AXOLOTL}) has no tuna equivalent yet; tuna's methods: `tuna methods`")
        where = f"{section}.{key}" if section else key
        *parents, leaf = target.split(".")
        node = raw
        for part in parents:
            if isinstance(node.get(part), str):  # `model: name` written short
                node[part] = {"name": node[part]}
            node = node.setdefault(part, {})
        if leaf in node:
            raise UserError(f"`{where}` (the name {whose} use) and `{target}` are both set; keep `{target}`")
        node[leaf] = value
        notes.append(f"read `{where}` (the name {whose} use) as `{target}`")
    return raw, notes
