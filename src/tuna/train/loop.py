"""The training loop, read top to bottom: setup, a step, evaluation, checkpoints, the run.

It knows methods and objectives only through their interfaces (`methods.base`, `objectives.base`)
and the objective's data kind (`data.kinds`); it never asks which one runs.

One optimizer step = `grad_accum` micro-batches; the loss is normalised by the step's total loss
weight (the data kind's `batch_weight`, summed) so accumulation is exact. Checkpoints
happen only at step boundaries; Ctrl-C asks the loop to stop at the next one and save, so every
checkpoint is a state an uninterrupted run also passed through.
Under torchrun each step's micro-batches are shared among the processes and the step stays the same
(`train.distributed`); rank 0 alone writes the run directory.
"""
from __future__ import annotations

import json
import math
import random
import resource
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from tuna import rundir
from tuna.atomic import atomic_directory
from tuna.config import Recipe
from tuna.data.batch import TrainBatches, real_tokens
from tuna.data.calibration import build_calibration
from tuna.data.dataset import Splits, load_splits
from tuna.data.fingerprint import changes as data_changes, data_fingerprint
from tuna.data.mask_thought import mask_thought, mask_token_id
from tuna.errors import UserError
from tuna.methods import build as build_method
from tuna.methods.base import Method
from tuna.models.attention import use_packed_attention
from tuna.models.hub import hub_id, name_base
from tuna.models.layers import count_parameters, trainable_names
from tuna.models.load import load_base
from tuna.models.reinit import check_reinitialised_layers_train, reinit_top_layers
from tuna.models.rope import apply_rope_scaling
from tuna.objectives import REGISTRY as OBJECTIVES
from tuna.objectives.base import Objective, ObjectiveContext
from tuna.objectives.chunked_ce import choose_token_losses
from tuna.objectives.reference import frozen_copy, reference_logits
from tuna.objectives.reference_logps import attach_reference_logps
from tuna.objectives.rewards import RewardErrors, RewardKnobs
from tuna.report.model_card import write_model_card
from tuna.report.run_report import write_run_report
from tuna.train import checkpoint, distributed
from tuna.train.cpu import release_freed_memory, set_threads
from tuna.train.compile import compile_blocks
from tuna.train.device import (autocast, explain_out_of_memory, resolve_device, resolve_precision,
                               saved_tensors)
from tuna.train.metrics import MetricsLog
from tuna.train.neftune import add_neftune
from tuna.train.optim import build_optimizer, check_available, clip_gradients, optimizer_kind
from tuna.train.trackers import Trackers, check_installed

STALLED_STEPS = 3  # a zero gradient norm this many steps in a row is worth a warning
SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


@dataclass
class RunResult:
    run_dir: str
    steps: int
    tokens: int
    seconds: float
    train_loss: float | None
    eval_loss: float | None
    eval_ppl: float | None
    trainable_params: int
    total_params: int
    peak_memory_mb: float
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)  # what the run went on despite (a data change on resume)
    data: str = ""  # what trained: the rendered training split's counts (and a data.sources mix)
    eval_data: str = ""  # what evaluated: the held-out split's counts


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class StopRequest:
    """First Ctrl-C: finish the current step, checkpoint, stop. Second: abort at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no signal handling there
            self._previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ntuna: stopping after this step and saving a checkpoint (Ctrl-C again to abort)", file=sys.stderr)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def prepare_run_dir(recipe: Recipe, resume: bool, dist: distributed.Dist, say) -> Path:
    """The run directory, refused when it is someone else's; a new run's config is written here, a resumed
    run's only once its checkpoint has loaded (a refused resume leaves the directory as it was)."""
    if recipe.output_dir is None:
        recipe.output_dir = dist.from_main(f"runs/{recipe.method}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = Path(recipe.output_dir)
    has_checkpoint = bool(checkpoint.checkpoints(run_dir / rundir.CHECKPOINTS))
    if resume and not has_checkpoint:
        raise UserError(f"nothing to resume in {run_dir}: it has no checkpoint")
    if not resume and (has_checkpoint or (run_dir / rundir.FINAL).exists()):
        raise UserError(f"{run_dir} already holds a run; resume it with --resume or choose another output_dir")
    if not resume and run_dir.is_dir() and not rundir.holds_tuna_files(run_dir):
        raise UserError(f"{run_dir} holds files that are not a tuna run, and tuna writes only into a new, empty or "
                        "run directory; choose another output_dir")
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for leftover in rundir.clear_leftovers(run_dir):
            say(f"removed {leftover}, left by a write that was cut short")
        if not resume:
            stale = rundir.set_aside_stale_log(run_dir)
            if stale:
                say(f"the log of an earlier attempt that stopped before its first checkpoint is now {stale}")
            (run_dir / rundir.CONFIG).write_text(recipe.to_yaml())
    dist.barrier()
    return run_dir


def train(recipe: Recipe, *, resume: bool = False, progress: bool = True, allow_data_change: bool = False) -> RunResult:
    """Train `recipe`, as one process or as this process's rank of a torchrun launch. Resuming a run that
    finished changes nothing and returns its summary."""
    with distributed.session(recipe.train.distributed, resolve_device(recipe.train.device)) as dist:
        finished = resume and recipe.output_dir and rundir.finished_summary(Path(recipe.output_dir),
                                                                            recipe.train.max_steps)
        if finished:
            if dist.main:
                print(f"tuna: {recipe.output_dir} is finished ({finished['steps']} steps, final/ complete); "
                      "nothing to do", file=sys.stderr)
            return RunResult(**{f.name: finished[f.name] for f in fields(RunResult) if f.name in finished})
        run = setup(recipe, dist, resume=resume, allow_data_change=allow_data_change)
        return fit(run, progress=progress)


@dataclass
class Run:
    """What `setup` builds for one run; a step, an evaluation and a checkpoint read and advance it."""
    recipe: Recipe
    dist: distributed.Dist
    run_dir: Path
    precision: str
    method: Method
    objective: Objective
    model: torch.nn.Module
    tokenizer: object
    splits: Splits
    ctx: ObjectiveContext
    batches: TrainBatches
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler | None
    trained: list[str]  # what the optimizer owns and checkpoints hold, whatever a step trains
    max_steps: int
    global_batch: int  # items of the data kind (or packed rows) in one step, over all processes
    say: Callable[[str], None]
    data: dict  # the data files' fingerprint (`data.fingerprint`), kept in every checkpoint
    allow_data_change: bool = False
    step: int = 0
    tokens: int = 0
    warnings: list[str] = field(default_factory=list)
    parameters: tuple[int, int] = (0, 0)  # (trainable, total) as the first step starts: what the run reports

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / rundir.CHECKPOINTS


# setup -------------------------------------------------------------------------------------------------------

def setup(recipe: Recipe, dist: distributed.Dist, *, resume: bool, allow_data_change: bool = False) -> Run:
    """Model, method, data, optimizer and, with `resume`, the state of the last checkpoint."""
    cfg = recipe.train
    precision = resolve_precision(cfg.precision, dist.device)
    method, objective = build_method(recipe), OBJECTIVES[recipe.objective]
    check_installed(cfg.report_to)  # before any slow work
    check_available(recipe.optim)
    say = (lambda msg: print(f"tuna: {msg}", file=sys.stderr)) if dist.main else (lambda msg: None)
    run_dir = prepare_run_dir(recipe, resume, dist, say)
    data = data_fingerprint(recipe.data)  # before the data is read
    if dist.device.type == "cpu":
        set_threads(cfg.cpu_threads)
        if cfg.release_memory and not release_freed_memory():
            say("train.release_memory: this C library has no mallopt (glibc's); freed memory stays in its heap")
    seed_everything(cfg.seed)
    model, tokenizer = load_base(recipe.model.name)
    if recipe.model.rope_scaling:
        apply_rope_scaling(model, recipe.model.rope_scaling)
    model, splits, ctx = prepare_model_and_data(recipe, dist, method, objective, model, tokenizer, run_dir,
                                                precision=precision, resume=resume, say=say)
    trained = trainable_names(model)
    dist.shard(model, precision)  # fsdp: before the optimizer, which must hold the sharded parameters
    batches = TrainBatches(splits.train, objective.kind, batching=recipe.batching, batch_size=cfg.micro_batch_size,
                           max_tokens=recipe.data.max_tokens, weighting=cfg.loss_weighting,
                           pad_id=tokenizer.pad_token_id, seed=cfg.seed, versions=splits.train_versions,
                           rows_per_step=cfg.grad_accum * dist.world)
    max_steps = cfg.max_steps or math.ceil(cfg.epochs * batches.batches_per_epoch / (cfg.grad_accum * dist.world))
    optimizer = build_optimizer(model, recipe, method, cfg.lr or method.default_lr)
    from transformers import get_scheduler

    scheduler = get_scheduler(SCHEDULES[cfg.schedule], optimizer, num_warmup_steps=round(cfg.warmup_ratio * max_steps),
                              num_training_steps=max_steps)
    run = Run(recipe, dist, run_dir, precision, method, objective, model, tokenizer, splits, ctx, batches, optimizer,
              scheduler, torch.amp.GradScaler(dist.device.type) if precision == "fp16" else None, trained, max_steps,
              cfg.micro_batch_size * cfg.grad_accum * dist.world, say, data, allow_data_change)
    if dist.world > 1:  # each rank its own dropout, noise and sampling streams; the data plan stays shared
        seed_everything(cfg.seed * 1_000_003 + dist.rank + 1)
    if resume:
        restore(run)
        if dist.main:
            (run_dir / rundir.CONFIG).write_text(recipe.to_yaml())
    begin_step(run)
    run.parameters = count_parameters(run.model)
    describe(run)
    return run


def prepare_model_and_data(recipe: Recipe, dist, method: Method, objective: Objective, model, tokenizer,
                           run_dir: Path, *, precision: str, resume: bool, say) -> tuple:
    """The model the method prepared, the rendered splits, and the objective's context."""
    device = dist.device
    adapter_reference = method.adapter_off_is_base()
    # A per-sequence reference without an adapter to switch off is computed once, below: no live copy.
    precomputed_reference = objective.reference_per_sequence and not adapter_reference
    live_reference = objective.needs_reference and not precomputed_reference
    dist.check(recipe, method, objective, precomputed_reference=precomputed_reference, precision=precision)
    frozen = frozen_copy(model).to(device) if live_reference and not adapter_reference else None
    knobs = getattr(recipe, objective.name) if objective.knobs else None
    reward_errors = RewardErrors(knobs.max_reward_errors) if isinstance(knobs, RewardKnobs) else None
    rewrite = None
    if objective.rewrite_train:
        model.to(device)
        rewrite = lambda records: objective.rewrite_train(
            records, knobs, model, tokenizer, data_format=recipe.data.format, max_tokens=recipe.data.max_tokens,
            batch_size=recipe.eval.batch_size, run_dir=run_dir, errors=reward_errors, resume=resume, say=say)
    splits = load_splits(recipe.data, tokenizer, recipe.train.seed, objective.kind, rewrite_train=rewrite)
    if objective.check_data:
        objective.check_data(knobs, splits.train + splits.eval)
    if precomputed_reference:
        model.to(device)
        attach_reference_logps(model, {"train": splits.train, "eval": splits.eval}, run_dir,
                               precision=precision, say=say, batch_size=recipe.eval.batch_size,
                               pad_id=tokenizer.pad_token_id, device=device, autocast=lambda: autocast(precision, device))
    model = prepare_method(recipe, method, model, tokenizer, splits, device)
    # the decoder and the head may run apart, except inside FSDP's sharded forward (which unshards per module call)
    head_apart = objective.chunked_loss and method.plain_forward and dist.mode != "fsdp"
    losses = choose_token_losses(recipe.train.loss_chunk_tokens, head_apart=head_apart)
    ctx = ObjectiveContext(knobs, reference_logits(model, frozen) if live_reference else None, tokenizer=tokenizer,
                           reward_errors=reward_errors, token_losses=losses, sum_over_ranks=dist.sum_value)
    return model, splits, ctx


def prepare_method(recipe: Recipe, method: Method, model, tokenizer, splits: Splits, device: torch.device):
    """The model on its device, shaped by the method and by the knobs that go with any method."""
    cfg = recipe.train
    if recipe.init.reinit_top_layers:
        reinit_top_layers(model, recipe.init.reinit_top_layers)
    model.to(device)
    if recipe.batching.startswith("packed"):
        use_packed_attention(model)
    calibration = build_calibration(splits.train_sequences(), tokenizer, cfg.micro_batch_size, device, cfg.seed,
                                    recipe.data.max_tokens)
    model = method.prepare(model, calibration)
    if recipe.init.reinit_top_layers:
        check_reinitialised_layers_train(model, recipe.init.reinit_top_layers, method.name)
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if cfg.neftune_alpha:
        add_neftune(model, cfg.neftune_alpha)
    if cfg.compile:
        compile_blocks(model)
    model.train()
    return model


def describe(run: Run) -> None:
    cfg, say = run.recipe.train, run.say
    trainable, total = run.parameters
    threads = f" ({torch.get_num_threads()} threads)" if run.dist.device.type == "cpu" else ""
    say(f"model {run.recipe.model.name} | method {run.method.name}: {trainable:,} of {total:,} parameters train "
        f"({100 * trainable / total:.2f}%) | device {run.dist.device}{threads}, {run.precision} | peak memory so far "
        f"{peak_memory_mb(run.dist.device):,.0f} MiB")
    say(f"data: train {run.splits.train_stats.summary()}"
        + (f"; eval {run.splits.eval_stats.summary()}" if run.splits.eval_stats else "; no eval split"))
    size, unit = cfg.micro_batch_size, run.objective.kind.unit
    if run.recipe.batching == "packed":
        unit = f"rows of {run.recipe.data.max_tokens} tokens"
    elif run.recipe.batching == "packed_step":
        size, unit = 1, f"packed rows of about {cfg.micro_batch_size} {unit}"  # `summary` gives the measured mean
    say(f"{run.max_steps} steps of {size}×{cfg.grad_accum * run.dist.world} {unit} "
        f"({run.batches.summary()}); run directory {run.run_dir}")
    if run.dist.world > 1:
        say(f"{run.dist.world} processes ({run.dist.mode}): each trains {cfg.grad_accum} of a step's micro-batches")


# checkpoint --------------------------------------------------------------------------------------------------

def save_checkpoint(run: Run) -> Path:
    state = {"step": run.step, "tokens": run.tokens, "global_batch": run.global_batch,
             "optimizer_kind": optimizer_kind(run.recipe.optim), "scheduler": run.scheduler.state_dict(),
             "sampler": run.batches.state_dict(), "rng": checkpoint.rng_states(),
             "scaler": run.scaler.state_dict() if run.scaler else None, "method": run.method.extra_state(run.model),
             "data": run.data}
    try:
        return run.dist.save_checkpoint(run.checkpoints, run.step, run.model, run.optimizer, run.trained, state,
                                        run.recipe.train.keep_checkpoints, adapter_writer(run))
    except Exception as exc:
        good = checkpoint.good_checkpoints(run.checkpoints)
        need = checkpoint.size_bytes(good[-1]) if good else 0
        if not checkpoint.disk_full(exc, run.checkpoints, need):
            raise
        raise UserError(f"no space left on the device of {run.checkpoints} for the checkpoint of step {run.step}"
                        + (f" (about {need / 2**20:,.1f} MB, the size of the last one)" if need else "")
                        + (f"; {good[-1]} is intact" if good else "; no checkpoint had been written yet")
                        + f". Free some space, then `tuna train --resume {run.run_dir}`"
                        + ("" if good else " cannot help: start the run again") ) from None


def adapter_writer(run: Run) -> Callable[[Path], None] | None:
    """For a method that saves a PEFT adapter: what writes it into a checkpoint directory, so every checkpoint
    loads with PEFT alone. The random streams and the train mode are put back after it (PiSSA's conversion
    loads a temporary adapter, which draws its initialisation and leaves the model in eval mode), so that
    writing a checkpoint changes nothing in the run."""
    if not run.method.saves_adapter:
        return None

    def write(directory: Path) -> None:
        states, training = checkpoint.rng_states(), run.model.training
        save_portable(run.method, run.model, directory / checkpoint.ADAPTER, run.recipe.model.name)
        checkpoint.set_rng_states(states)
        run.model.train(training)
        # PEFT's empty card names the local path the base came from; the run's card is in final/
        (directory / checkpoint.ADAPTER / "README.md").unlink(missing_ok=True)

    return write


def restore(run: Run) -> None:
    """The newest checkpoint whose files are whole and plain data: its weights, optimizer, schedule, data
    position, RNG and method state. Damaged ones are skipped, saying why."""
    kind = optimizer_kind(run.recipe.optim)
    for latest in reversed(checkpoint.good_checkpoints(run.checkpoints, say=run.say)):
        try:
            state = run.dist.load_checkpoint(latest, run.model, run.optimizer, run.trained, kind)  # + this rank's RNG
            break
        except checkpoint.UnsafeCheckpoint as exc:
            run.say(f"checkpoint {latest.name} is skipped: {exc}")
    else:
        raise UserError(f"no checkpoint in {run.checkpoints} can be used (each is damaged or not plain data); "
                        "start the run again")
    check_data_unchanged(run, state.get("data"))
    if distributed.optimizer_kind_of(state) != kind:
        run.say(f"the checkpoint holds {distributed.optimizer_kind_of(state)} optimizer state and this run uses "
                f"{kind} (optim.eight_bit changed): its moments start afresh; the weights, schedule and data "
                f"position are restored")
    if state.get("global_batch", run.global_batch) != run.global_batch:
        run.say(f"the checkpoint's steps took {state['global_batch']} examples (micro_batch_size × grad_accum × "
                f"processes) and this run's take {run.global_batch}: the data goes on in order, the steps are not "
                f"the ones the first run would have taken")
    run.scheduler.load_state_dict(state["scheduler"])
    run.batches.load_state_dict(state["sampler"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.method.load_extra_state(run.model, state["method"])
    run.step, run.tokens = state["step"], state["tokens"]
    run.say(f"resumed from {latest} at step {run.step}")


def check_data_unchanged(run: Run, then: dict | None) -> None:
    """Refuse to resume on data other than the checkpoint's, unless asked to go on (then say so, and keep it)."""
    changed = data_changes(then, run.data) if then is not None else []
    if not changed:
        return
    if not run.allow_data_change:
        raise UserError(f"the data changed since the checkpoint: {'; '.join(changed)}. The run would go on with "
                        "other examples than it started with; restore the data, or resume with --allow-data-change")
    warning = f"resumed on changed data ({'; '.join(changed)}): the steps after the resume saw other examples"
    run.warnings.append(warning)
    run.say(f"warning: {warning}")


# step --------------------------------------------------------------------------------------------------------

def begin_step(run: Run) -> None:
    if run.method.on_step_start(run.model, run.step, run.max_steps):
        run.optimizer.state.clear()  # the method re-initialised what trains: old moments no longer apply


def step_batches(run: Run) -> list[dict]:
    """The step's micro-batches, the same on every rank, with Masked Thought applied when it is on."""
    data = run.recipe.data
    micro = [run.batches.next() for _ in range(run.recipe.train.grad_accum * run.dist.world)]
    if data.mask_thought_ratio:
        masking = torch.Generator().manual_seed(run.recipe.train.seed * 1_000_003 + run.step)
        mask_id = mask_token_id(run.tokenizer)
        micro = [mask_thought(b, data.mask_thought_ratio, mask_id, masking) for b in micro]
    return micro


def train_step(run: Run) -> tuple[float, int, dict, float]:
    """One optimizer step: (loss, tokens, logged stats, gradient norm before clipping)."""
    cfg, device, kind = run.recipe.train, run.dist.device, run.objective.kind
    micro = step_batches(run)
    step_weight = sum(kind.batch_weight(b) for b in micro) or 1.0
    loss_value, step_tokens, step_stats = 0.0, 0, {}
    with explain_out_of_memory(run.recipe, run.step + 1, last_checkpoint=lambda: checkpoint.checkpoints(run.checkpoints)):
        mine = run.dist.share(micro)
        if run.objective.rollout:
            mine = run.objective.rollout(run.model, mine, run.ctx)
        for batch in mine:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            with autocast(run.precision, device), saved_tensors(cfg.offload_activations, device):
                loss, stats = run.objective.loss(run.model, batch, step_weight, run.ctx)
            step_tokens += stats.pop("tokens", None) or real_tokens(batch)  # samplers count their own
            (run.scaler.scale(loss) if run.scaler else loss).backward()
            loss_value += float(loss.detach())
            for key, value in stats.items():  # each micro-batch's share of the step, like the loss
                key = key if "/" in key else f"train/{key}"  # TRL's `rewards/chosen` stays as it is
                step_stats[key] = step_stats.get(key, 0.0) + value
    loss_value, step_tokens, step_stats = run.dist.sum_step(loss_value, step_tokens, step_stats)
    if not math.isfinite(loss_value):
        good = checkpoint.good_checkpoints(run.checkpoints)
        then = (f"the last good checkpoint is {good[-1]}. Lower train.lr or check the data, then "
                f"`tuna train --resume {run.run_dir}`" if good else
                "no checkpoint had been written yet. Lower train.lr or check the data, and start the run again")
        raise UserError(f"loss became {loss_value} at step {run.step + 1}: training diverged and the step was not "
                        f"applied; {then}")
    run.dist.sum_gradients(run.model)
    if run.scaler:
        run.scaler.unscale_(run.optimizer)
    grad_norm = clip_gradients(run.model, cfg.max_grad_norm, run.recipe.optim.clip_per_component)
    if run.scaler:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss_value, step_tokens, step_stats, grad_norm


def base_lr(run: Run) -> float:
    """The schedule's rate for a multiplier of 1, whatever each group's own multiplier (LoRA+, layer decay)."""
    group = run.optimizer.param_groups[0]
    return run.scheduler.get_last_lr()[0] / group["lr_scale"]


# evaluation --------------------------------------------------------------------------------------------------

def evaluate(run: Run) -> dict:
    """The held-out metrics of the objective's data kind, logged as eval/<name>."""
    device = run.dist.device
    return run.objective.kind.evaluate(run.model, run.splits.eval, run.objective, run.ctx,
                                       batch_size=run.recipe.eval.batch_size, pad_id=run.tokenizer.pad_token_id,
                                       device=device, autocast=lambda: autocast(run.precision, device))


def evaluates_at(run: Run) -> bool:
    every = run.recipe.eval.every
    return bool(run.splits.eval) and (run.step == run.max_steps or (every and run.step % every == 0))


# the run -----------------------------------------------------------------------------------------------------

def fit(run: Run, *, progress: bool) -> RunResult:
    """Steps until `max_steps` or a Ctrl-C, logging each, evaluating and checkpointing on schedule; then the
    final model, the summary and the report."""
    cfg, dist = run.recipe.train, run.dist
    resumed = run.step > 0
    metrics, trackers = distributed.UNLOGGED, distributed.UNLOGGED  # rank 0 alone writes them
    if dist.main:
        metrics = MetricsLog(run.run_dir / rundir.METRICS, resume_step=run.step if resumed else None)
        trackers = Trackers(cfg.report_to, run.recipe, run.run_dir)  # fed each record after metrics.jsonl
    last_loss, last_eval = last_logged(run.run_dir / rundir.METRICS) if resumed else (None, None)
    last_saved, stalled = run.step if resumed else -1, 0
    started = time.perf_counter()
    bar = tqdm(total=run.max_steps, initial=run.step, desc="train", unit="step", disable=not (progress and dist.main),
               dynamic_ncols=True)
    try:
        with StopRequest() as stop:
            while run.step < run.max_steps and not dist.any(stop.requested):
                t0 = time.perf_counter()
                begin_step(run)
                lr = base_lr(run)
                loss_value, step_tokens, step_stats, grad_norm = train_step(run)
                run.step, run.tokens, last_loss = run.step + 1, run.tokens + step_tokens, loss_value
                stalled = stalled + 1 if grad_norm == 0 else 0
                if stalled == STALLED_STEPS:
                    run.say(f"warning: the gradient norm has been 0 for {STALLED_STEPS} steps (loss {loss_value:.4g}): "
                            "training has stalled, often after a learning rate far too high; lower train.lr")
                seconds = time.perf_counter() - t0
                record = {"step": run.step, "train/loss": loss_value, "train/lr": lr, "train/grad_norm": grad_norm,
                          "train/tokens_per_s": step_tokens / seconds, "train/tokens": run.tokens,
                          "epoch": run.batches.epoch, **step_stats}
                if evaluates_at(run):
                    last_eval = evaluate(run)
                    record.update({f"eval/{key}": value for key, value in last_eval.items()})
                metrics.write(record)
                trackers.log(record)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s=f"{step_tokens / seconds:.0f}",
                                refresh=False)
                bar.update(1)
                if cfg.save_every and run.step % cfg.save_every == 0:
                    save_checkpoint(run)
                    last_saved = run.step
    finally:
        bar.close()
        trackers.close()
        metrics.close()
    if last_saved != run.step:
        save_checkpoint(run)
    return finish(run, last_loss, last_eval, seconds=time.perf_counter() - started)


def last_logged(path: Path) -> tuple[float | None, dict | None]:
    """The last logged train loss and held-out metrics: what a resumed run that takes no step reports."""
    records = rundir.read_metrics(path) if path.is_file() else []
    loss = next((r["train/loss"] for r in reversed(records) if "train/loss" in r), None)
    evals = next(({k.removeprefix("eval/"): v for k, v in r.items() if k.startswith("eval/")}
                  for r in reversed(records) if any(k.startswith("eval/") for k in r)), None)
    return loss, evals


def finish(run: Run, last_loss: float | None, last_eval: dict | None, *, seconds: float) -> RunResult:
    interrupted = run.step < run.max_steps
    trainable, total = run.parameters
    eval_stats = run.splits.eval_stats
    result = RunResult(run_dir=str(run.run_dir), steps=run.step, tokens=run.tokens, seconds=seconds,
                       train_loss=last_loss, eval_loss=last_eval and last_eval.get("loss"),
                       eval_ppl=last_eval and last_eval.get("ppl"), trainable_params=trainable, total_params=total,
                       peak_memory_mb=peak_memory_mb(run.dist.device), interrupted=interrupted,
                       warnings=run.warnings, data=run.splits.train_stats.summary(),
                       eval_data=eval_stats.summary() if eval_stats else "")
    if interrupted:
        run.say(f"stopped at step {run.step}; resume with: tuna train --resume {run.run_dir}")
    else:
        with run.dist.whole_model(run.model):
            if run.dist.main:
                save_final(run.method, run.model, run.tokenizer, run.run_dir, model_name=run.recipe.model.name,
                           summary=asdict(result))
    if run.dist.main:
        (run.run_dir / rundir.SUMMARY).write_text(json.dumps(asdict(result), indent=1))
        run.say(f"report: {write_run_report(run.run_dir, device=str(run.dist.device))}")
    return result


def save_final(method, model, tokenizer, run_dir: Path, *, model_name: str, summary: dict) -> None:
    """The final model or adapter, the tokenizer and the model card (from `summary`, the run's summary.json to
    be), renamed into `final/` once complete."""
    with atomic_directory(run_dir / rundir.FINAL) as tmp:
        save_portable(method, model, tmp, model_name)
        tokenizer.save_pretrained(tmp)
        write_model_card(run_dir, tmp, summary)


def save_portable(method, model, out: Path, model_name: str) -> None:
    """What the method saves (model, adapter or delta) into `out`. A PEFT adapter names its base `model_name` by
    hub id (`models.hub`), not by the local path it was loaded from, so it loads anywhere."""
    method.save_final(model, out)
    name_base(out, hub_id(model_name))
