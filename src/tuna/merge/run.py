"""`tuna merge CONFIG --out DIR`: check the recipe, open the inputs lazily, merge tensor by tensor, and write
a plain transformers checkpoint (sharded safetensors, config, tokenizer and chat template, model card)
atomically: `DIR` appears complete or not at all."""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tuna import __version__
from tuna.atomic import atomic_directory
from tuna.errors import UserError
from tuna.merge import vocab
from tuna.merge.config import MergeConfig, evaluate, load_merge_config
from tuna.merge.rules import RULES, Rule, lines_scale, tensor_rng
from tuna.merge.sources import open_source, tokenizer_of
from tuna.merge.write import StreamingShards, model_card, shard_bytes

LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
IGNORED = {"int8_mask"}  # mergekit's memory option: no effect on the values


def merge_models(config: str | Path | dict, out: str | Path, *, progress: bool = True) -> Path:
    """Merge as `config` says into `out` (absent or empty); returns `out`."""
    cfg, out = load_merge_config(config), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not empty; choose a new directory")
    if cfg.output == "adapter":
        from tuna.merge.adapters import merge_adapters

        return merge_adapters(cfg, out)
    rule, max_bytes = checked_rule(cfg), shard_bytes(cfg.shard_size)
    inputs = merged_inputs(cfg, rule)
    base = open_source(cfg.base_model) if cfg.base_model else None
    sources = [open_source(m.model) for m in inputs]
    everyone = [s for s in [base, *sources] if s is not None]
    reference, keys = everyone[0], everyone[0].keys()  # the base, else the first input: names, config, dtypes
    for source in everyone:
        if not source.lazy:
            print(f"tuna merge: {source.spec} cannot be read tensor by tensor; it is loaded whole", file=sys.stderr)
    check_keys(reference, everyone[1:])
    check_shapes(keys, everyone, aligning=cfg.tokenizer_source is not None)
    alignment = vocab_alignment(cfg, everyone, keys)
    layers = reference.config().num_hidden_layers
    rows = alignment["rows"] if alignment else None
    layout = [(key, (rows, *reference.shape(key)[1:]) if rows and vocab.is_vocab_tensor(key) else reference.shape(key),
               output_dtype(cfg, reference, key)) for key in keys]
    with atomic_directory(out) as tmp:
        with StreamingShards(tmp, layout, max_bytes) as writer:
            for key in tqdm(keys, desc="tuna merge", unit="tensor", disable=not progress):
                depth = layer_depth(key, layers)
                fill = alignment["owner"].get(key).float() if alignment and vocab.is_vocab_tensor(key) else None
                base_t = read(base, key, alignment, fill) if base and rule.needs_base else None
                tensors = [read(s, key, alignment, fill) for s in sources]
                params = [resolved(rule, m.parameters, cfg.parameters, key, depth) for m in inputs]
                shared = resolved(rule, {}, cfg.parameters, key, depth)
                merged = rule.merge(base_t, tensors, params, shared, tensor_rng(cfg.seed, key))
                scaling = lines_of(cfg, rule, shared)
                if scaling is not None:
                    merged = base_t + lines_scale(key, depth, *scaling) * (merged - base_t)
                writer.write(key, merged)
        write_metadata(tmp, cfg, reference, alignment, [m.model for m in inputs])
    return out


def checked_rule(cfg: MergeConfig) -> Rule:
    """The rule, with everything about the recipe that can be refused before a model loads refused."""
    rule = RULES.get(cfg.merge_method)
    if rule is None:
        raise UserError(f"unknown merge_method {cfg.merge_method!r}; tuna merges with: {', '.join(RULES)}")
    if rule.needs_base and not cfg.base_model:
        raise UserError(f"{rule.name} merges task vectors and needs base_model")
    inputs = merged_inputs(cfg, rule)
    if len(inputs) < rule.min_models:
        raise UserError(f"{rule.name} needs at least {rule.min_models} fine-tuned model(s) besides the base, got "
                        f"{len(inputs)}")
    if rule.max_models is not None and len(inputs) > rule.max_models:
        raise UserError(f"{rule.name} takes {rule.max_models} model besides the base, got {len(inputs)}")
    if cfg.chat_template not in (None, "auto") and "{%" not in cfg.chat_template and "{{" not in cfg.chat_template:
        raise UserError("chat_template must be a Jinja template (or `auto` to keep the tokenizer's own)")
    if cfg.lines is not None and not rule.task_vector:
        raise UserError(f"lines scales a merged task vector; {rule.name} does not make one (use task_arithmetic, "
                        "ties, dare_linear, dare_ties, model_stock or lines)")
    for where, settings, allowed in [("parameters", cfg.parameters, set(rule.defaults)),
                                     *[(f"{m.model}: parameters", m.parameters, set(rule.per_model)) for m in inputs]]:
        unknown = sorted(set(settings) - allowed - IGNORED)
        if unknown:
            raise UserError(f"{where}: {rule.name} has no parameter {unknown[0]!r} "
                            f"(it reads: {', '.join(sorted(allowed)) or 'none'})")
        for name, setting in settings.items():
            if not all(isinstance(v, (int, float, bool)) for v in values_in(setting)):
                raise UserError(f"{where}: {name} must be a number, a list of numbers or {{filter, value}} "
                                f"conditions, got {setting!r}")
        if "density" in settings and not all(0 < v <= 1 for v in values_in(settings["density"])):
            raise UserError(f"{where}: density must be in (0, 1], got {settings['density']!r}")
    return rule


def merged_inputs(cfg: MergeConfig, rule: Rule) -> list:
    """The models merged: for a method with a base, the base listed among the models is the base (as in
    mergekit), not another input; a soup merges every model listed."""
    return [m for m in cfg.models if not (rule.needs_base and m.model == cfg.base_model)]


def values_in(setting) -> list:
    """Every value inside a parameter setting (a scalar, a gradient, or conditions)."""
    if isinstance(setting, dict):
        return values_in(setting.get("value"))
    if isinstance(setting, list):
        return [v for s in setting for v in values_in(s)]
    return [setting]


def resolved(rule: Rule, own: dict, shared: dict, key: str, depth: float | None) -> dict:
    """Parameter values for one tensor: the input's own settings, then the global ones, then the defaults."""
    values = {}
    for name, default in rule.defaults.items():
        setting = own.get(name, shared.get(name))
        value = default if setting is None else evaluate(setting, key, 0.0 if depth is None else depth)
        values[name] = default if value is None else value
    return values


def lines_of(cfg: MergeConfig, rule: Rule, shared: dict) -> tuple[float, float] | None:
    if rule.name == "lines":
        return shared["alpha"], shared["beta"]
    return (cfg.lines.alpha, cfg.lines.beta) if cfg.lines is not None else None


def layer_depth(key: str, layers: int) -> float | None:
    """(ℓ−1)/(L−1) for a tensor of decoder block ℓ of L; None outside the blocks."""
    match = LAYER.search(key)
    if match is None:
        return None
    return int(match[1]) / (layers - 1) if layers > 1 else 1.0


def check_keys(reference, others) -> None:
    names = set(reference.keys())
    for source in others:
        theirs = set(source.keys())
        if theirs != names:
            missing, extra = sorted(names - theirs), sorted(theirs - names)
            where = (f"{missing[0]} is in {reference.spec} but not in {source.spec}" if missing
                     else f"{extra[0]} is in {source.spec} but not in {reference.spec}")
            raise UserError(f"the inputs have different tensors: {where}")


def check_shapes(keys: list[str], sources: list, *, aligning: bool) -> None:
    """Refuse, before anything is read, a tensor whose shape differs between inputs (only the vocabulary
    rows may differ, and only when `tokenizer_source` says how to align them)."""
    for key in keys:
        shapes = [s.shape(key) for s in sources]
        compared = [shape[1:] for shape in shapes] if aligning and vocab.is_vocab_tensor(key) else shapes
        if len(set(compared)) > 1:
            vocab.refuse_mismatch(key, [s.spec for s in sources], shapes)


def vocab_alignment(cfg: MergeConfig, everyone: list, keys: list[str]) -> dict | None:
    """None when every input shares one vocabulary; else, under `tokenizer_source`, each input's row index
    into the chosen vocabulary (and the chosen model, whose rows fill the gaps)."""
    tokenizers = {s.spec: tokenizer_of(s) for s in everyone}
    vocabs = {spec: t.get_vocab() for spec, t in tokenizers.items()}
    if cfg.tokenizer_source is None:
        first = everyone[0].spec
        for source in everyone[1:]:
            if vocabs[source.spec] != vocabs[first]:
                raise UserError(f"the vocabularies differ: {first} has {len(vocabs[first])} tokens, {source.spec} "
                                f"has {len(vocabs[source.spec])} (or other ids); set tokenizer_source (`base` or "
                                "one input) to merge into one of them")
        return None
    owner_spec = cfg.base_model if cfg.tokenizer_source == "base" else cfg.tokenizer_source
    owner = next((s for s in everyone if s.spec == owner_spec), None)
    if owner is None:
        raise UserError(f"tokenizer_source {cfg.tokenizer_source!r} is not one of the inputs"
                        + (" (and there is no base_model)" if cfg.tokenizer_source == "base" else ""))
    vocab_keys = [k for k in keys if vocab.is_vocab_tensor(k)]
    out_rows = owner.shape(vocab_keys[0])[0]
    index = {s.spec: vocab.row_index(vocabs[owner.spec], vocabs[s.spec], out_rows, s.shape(vocab_keys[0])[0])
             for s in everyone}
    return {"owner": owner, "index": index, "tokenizer": tokenizers[owner.spec], "rows": out_rows}


def read(source, key: str, alignment: dict | None, fill: torch.Tensor | None) -> torch.Tensor:
    """One input's tensor in float32; a vocabulary tensor under `tokenizer_source` re-ordered into the chosen
    vocabulary, `fill` (the chosen model's tensor) giving the rows it lacks."""
    if fill is None:
        return source.get(key).float()
    if source is alignment["owner"]:
        return fill
    return vocab.aligned(source.get(key).float(), alignment["index"][source.spec], fill)


def output_dtype(cfg: MergeConfig, reference, key: str) -> torch.dtype:
    """`out_dtype`, else `dtype`, else the tensor's own dtype in the reference (the base, or the first input)."""
    name = cfg.out_dtype or cfg.dtype
    return DTYPES[name] if name else reference.dtype(key)


def write_metadata(directory: Path, cfg: MergeConfig, reference, alignment: dict | None, inputs: list[str]) -> None:
    """config.json (the reference's, with the output's dtype and vocabulary size), generation config,
    tokenizer with its chat template, and the model card."""
    config = reference.config()
    if cfg.out_dtype or cfg.dtype:
        config.dtype = cfg.out_dtype or cfg.dtype
    tokenizer = alignment["tokenizer"] if alignment else tokenizer_of(reference)
    if alignment:
        config.vocab_size = alignment["rows"]
    config.save_pretrained(directory)
    if (reference.directory / "generation_config.json").is_file():
        shutil.copy(reference.directory / "generation_config.json", directory)
    if cfg.chat_template not in (None, "auto"):
        tokenizer.chat_template = cfg.chat_template
    tokenizer.save_pretrained(directory)
    (directory / "README.md").write_text(model_card(cfg.model_dump(exclude_defaults=True), inputs, __version__))
