"""The training loop. It knows methods and objectives only through their registries.

One optimizer step = `grad_accum` micro-batches; the loss is normalised by the step's total loss
weight (target tokens, or sequences with `train.loss_weighting: sequence`) so accumulation is exact. Checkpoints happen only at step boundaries; Ctrl-C asks the loop to
stop at the next one and save, so every checkpoint is a state an uninterrupted run also passed through.
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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tuna import rundir
from tuna.atomic import atomic_directory
from tuna.config import Recipe
from tuna.data.batch import TrainBatches, real_tokens
from tuna.data.calibration import build_calibration
from tuna.data.dataset import load_splits
from tuna.data.mask_thought import mask_thought, mask_token_id
from tuna.errors import UserError
from tuna.eval.perplexity import heldout_loss
from tuna.methods import REGISTRY as METHODS
from tuna.methods.base import count_parameters, trainable_names
from tuna.models.attention import use_packed_attention
from tuna.models.load import load_base
from tuna.models.reinit import check_reinitialised_layers_train, reinit_top_layers
from tuna.models.rope import apply_rope_scaling
from tuna.objectives import REGISTRY as OBJECTIVES
from tuna.objectives.base import ObjectiveContext
from tuna.objectives.grpo import heldout_reward
from tuna.objectives.pairwise import heldout_preference
from tuna.objectives.rewards import RewardErrors
from tuna.objectives.reference import frozen_copy, reference_logits
from tuna.objectives.reference_logps import attach_reference_logps
from tuna.report.run_report import write_run_report
from tuna.train import checkpoint, distributed
from tuna.train.device import (autocast, explain_out_of_memory, resolve_device, resolve_precision,
                               saved_tensors)
from tuna.train.compile import compile_blocks
from tuna.train.metrics import MetricsLog
from tuna.train.neftune import add_neftune
from tuna.train.optim import build_optimizer, check_available, clip_gradients, optimizer_kind
from tuna.train.trackers import Trackers, check_installed

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


def prepare_run_dir(recipe: Recipe, resume: bool, dist: distributed.Dist) -> Path:
    if recipe.output_dir is None:
        recipe.output_dir = dist.from_main(f"runs/{recipe.method}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = Path(recipe.output_dir)
    has_run = bool(checkpoint.checkpoints(run_dir / rundir.CHECKPOINTS)) or (run_dir / rundir.FINAL).exists()
    if resume and not checkpoint.checkpoints(run_dir / rundir.CHECKPOINTS):
        raise UserError(f"nothing to resume in {run_dir}: it has no checkpoint")
    if not resume and has_run:
        raise UserError(f"{run_dir} already holds a run; resume it with --resume or choose another output_dir")
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / rundir.CONFIG).write_text(recipe.to_yaml())
    dist.barrier()
    return run_dir


def train(recipe: Recipe, *, resume: bool = False, progress: bool = True) -> RunResult:
    """Train `recipe`, as one process or as this process's rank of a torchrun launch."""
    with distributed.session(recipe.train.distributed, resolve_device(recipe.train.device)) as dist:
        return train_rank(recipe, dist, resume=resume, progress=progress)


def train_rank(recipe: Recipe, dist: distributed.Dist, *, resume: bool, progress: bool) -> RunResult:
    cfg = recipe.train
    device = dist.device
    precision = resolve_precision(cfg.precision, device)
    method, objective = METHODS[recipe.method], OBJECTIVES[recipe.objective]
    check_installed(cfg.report_to)  # before any slow work
    check_available(recipe.optim)
    run_dir = prepare_run_dir(recipe, resume, dist)
    say = (lambda msg: print(f"tuna: {msg}", file=sys.stderr)) if dist.main else (lambda msg: None)

    seed_everything(cfg.seed)
    model, tokenizer = load_base(recipe.model.name)
    if recipe.model.rope_scaling:
        apply_rope_scaling(model, recipe.model.rope_scaling)
    adapter_reference = method.adapter_off_is_base is not None and method.adapter_off_is_base(recipe)
    # A per-sequence reference without an adapter to switch off is computed once, below: no live copy.
    precomputed_reference = objective.reference_per_sequence and not adapter_reference
    live_reference = objective.needs_reference and not precomputed_reference
    dist.check(recipe, method, objective, precomputed_reference=precomputed_reference, precision=precision)
    frozen = frozen_copy(model).to(device) if live_reference and not adapter_reference else None
    knobs = getattr(recipe, objective.name, None)  # an objective's knob section shares its name
    reward_errors = RewardErrors(getattr(knobs, "max_reward_errors", 0))
    rewrite = None
    if objective.rewrite_train:
        model.to(device)
        rewrite = lambda records: objective.rewrite_train(records, recipe, model, tokenizer, run_dir=run_dir,
                                                          errors=reward_errors, resume=resume, say=say)
    splits = load_splits(recipe.data, tokenizer, cfg.seed, pairs=objective.pairs, prompts=objective.prompts,
                         rewrite_train=rewrite)
    if objective.check_data:
        objective.check_data(recipe, splits.train + splits.eval)
    if precomputed_reference:
        model.to(device)
        attach_reference_logps(model, {"train": splits.train, "eval": splits.eval}, run_dir,
                               precision=precision, say=say, batch_size=recipe.eval.batch_size,
                               pad_id=tokenizer.pad_token_id, device=device, autocast=lambda: autocast(precision, device))
    if recipe.init.reinit_top_layers:
        reinit_top_layers(model, recipe.init.reinit_top_layers)
    model.to(device)
    if recipe.data.batching == "packed":
        use_packed_attention(model)
    calibration = build_calibration(splits.train_sequences(), tokenizer, cfg.micro_batch_size, device, cfg.seed)
    model = method.prepare(model, recipe, calibration)
    if recipe.init.reinit_top_layers:
        check_reinitialised_layers_train(model, recipe.init.reinit_top_layers, method.name)
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if cfg.neftune_alpha:
        add_neftune(model, cfg.neftune_alpha)
    if cfg.compile:
        compile_blocks(model)
    model.train()
    ctx = ObjectiveContext(recipe, reference_logits(model, frozen) if live_reference else None, tokenizer=tokenizer,
                           reward_errors=reward_errors)
    trained = trainable_names(model)  # what the optimizer owns and checkpoints hold, whatever a step trains
    dist.shard(model, precision)  # fsdp: before the optimizer, which must hold the sharded parameters

    batches = TrainBatches(splits.train, batching=recipe.data.batching, batch_size=cfg.micro_batch_size,
                           max_tokens=recipe.data.max_tokens, weighting=cfg.loss_weighting,
                           pad_id=tokenizer.pad_token_id, seed=cfg.seed)
    global_batch = cfg.micro_batch_size * cfg.grad_accum * dist.world  # one step, over all processes
    max_steps = cfg.max_steps or math.ceil(cfg.epochs * batches.batches_per_epoch / (cfg.grad_accum * dist.world))
    optimizer = build_optimizer(model, recipe, method, cfg.lr or method.default_lr)
    from transformers import get_scheduler

    scheduler = get_scheduler(SCHEDULES[cfg.schedule], optimizer, num_warmup_steps=round(cfg.warmup_ratio * max_steps),
                              num_training_steps=max_steps)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    step, tokens = 0, 0
    ckpt_dir = run_dir / rundir.CHECKPOINTS
    if dist.world > 1:  # each rank its own dropout, noise and sampling streams; the data plan stays shared
        seed_everything(cfg.seed * 1_000_003 + dist.rank + 1)
    kind = optimizer_kind(recipe.optim)
    if resume:
        latest = checkpoint.checkpoints(ckpt_dir)[-1]
        state = dist.load_checkpoint(latest, model, optimizer, trained, kind)  # with this rank's RNG states
        if distributed.optimizer_kind_of(state) != kind:
            say(f"the checkpoint holds {distributed.optimizer_kind_of(state)} optimizer state and this run uses "
                f"{kind} (optim.eight_bit changed): its moments start afresh; the weights, schedule and data "
                f"position are restored")
        if state.get("global_batch", global_batch) != global_batch:
            say(f"the checkpoint's steps took {state['global_batch']} examples (micro_batch_size × grad_accum × "
                f"processes) and this run's take {global_batch}: the data goes on in order, the steps are not "
                f"the ones the first run would have taken")
        scheduler.load_state_dict(state["scheduler"])
        batches.load_state_dict(state["sampler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if method.load_extra_state:
            method.load_extra_state(model, state["method"])
        step, tokens = state["step"], state["tokens"]
        say(f"resumed from {latest} at step {step}")

    def begin_step():
        if method.on_step_start and method.on_step_start(model, recipe, step, max_steps):
            optimizer.state.clear()  # the method re-initialised what trains: old moments no longer apply

    begin_step()
    trainable, total = count_parameters(model)
    say(f"model {recipe.model.name} | method {method.name}: {trainable:,} of {total:,} parameters train "
        f"({100 * trainable / total:.2f}%) | device {device}, {precision} | peak memory so far "
        f"{peak_memory_mb(device):,.0f} MiB")
    say(f"data: train {splits.train_stats.summary()}"
        + (f"; eval {splits.eval_stats.summary()}" if splits.eval_stats else "; no eval split"))
    unit = "preference pairs" if objective.pairs else "examples"
    if objective.prompts:
        unit = f"prompts × {recipe.grpo.group_size} sampled completions"
    if recipe.data.batching == "packed":
        unit = f"rows of {recipe.data.max_tokens} tokens"
    say(f"{max_steps} steps of {cfg.micro_batch_size}×{cfg.grad_accum * dist.world} {unit} ({batches.summary()}); "
        f"run directory {run_dir}")
    if dist.world > 1:
        say(f"{dist.world} processes ({dist.mode}): each trains {cfg.grad_accum} of a step's micro-batches")

    def save_checkpoint():
        state = {"step": step, "tokens": tokens, "global_batch": global_batch, "optimizer_kind": kind,
                 "scheduler": scheduler.state_dict(), "sampler": batches.state_dict(),
                 "rng": checkpoint.rng_states(), "scaler": scaler.state_dict() if scaler else None,
                 "method": method.extra_state(model) if method.extra_state else None}
        return dist.save_checkpoint(ckpt_dir, step, model, optimizer, trained, state, cfg.keep_checkpoints)

    def evaluate() -> dict:
        """The held-out metrics, logged as eval/<name>."""
        options = dict(batch_size=recipe.eval.batch_size, pad_id=tokenizer.pad_token_id, device=device,
                       autocast=lambda: autocast(precision, device))
        if objective.pairs:
            return heldout_preference(model, objective, ctx, splits.eval, **options)
        if objective.prompts:
            return heldout_reward(model, tokenizer, splits.eval, recipe.grpo, ctx.reward_errors, recipe.eval.batch_size)
        heldout = heldout_loss(model, splits.eval, **options)
        return {"loss": heldout["loss"], "ppl": heldout["ppl"]}

    metrics, trackers = distributed.UNLOGGED, distributed.UNLOGGED  # rank 0 alone writes them
    if dist.main:
        metrics = MetricsLog(run_dir / rundir.METRICS, resume_step=step if resume else None)
        trackers = Trackers(cfg.report_to, recipe, run_dir)  # fed each record after metrics.jsonl
    mask_id = mask_token_id(tokenizer) if recipe.data.mask_thought_ratio else None
    last_loss, last_eval, last_saved = None, None, step if resume else -1
    started = time.perf_counter()
    bar = tqdm(total=max_steps, initial=step, desc="train", unit="step", disable=not (progress and dist.main),
               dynamic_ncols=True)
    with StopRequest() as stop:
        while step < max_steps and not dist.any(stop.requested):
            t0 = time.perf_counter()
            begin_step()
            micro = [batches.next() for _ in range(cfg.grad_accum * dist.world)]  # the step's, on every rank
            if recipe.data.mask_thought_ratio:
                masking = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
                micro = [mask_thought(b, recipe.data.mask_thought_ratio, mask_id, masking) for b in micro]
            step_weight = sum(objective.batch_weight(b) for b in micro) or 1.0
            loss_value, step_tokens, step_stats = 0.0, 0, {}
            with explain_out_of_memory(recipe, step + 1, last_checkpoint=lambda: checkpoint.checkpoints(ckpt_dir)):
                for batch in dist.share(micro):
                    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                    with autocast(precision, device), saved_tensors(cfg.offload_activations, device):
                        loss, stats = objective.loss(model, batch, step_weight, ctx)
                    step_tokens += stats.pop("tokens", None) or real_tokens(batch)  # samplers count their own
                    (scaler.scale(loss) if scaler else loss).backward()
                    loss_value += float(loss.detach())
                    for key, value in stats.items():  # each micro-batch's share of the step, like the loss
                        key = key if "/" in key else f"train/{key}"  # TRL's `rewards/chosen` stays as it is
                        step_stats[key] = step_stats.get(key, 0.0) + value
            loss_value, step_tokens, step_stats = dist.sum_step(loss_value, step_tokens, step_stats)
            if not math.isfinite(loss_value):
                bar.close()
                metrics.close()
                trackers.close()
                good = checkpoint.checkpoints(ckpt_dir)
                where = f"the last good checkpoint is {good[-1]}" if good else "no checkpoint had been written yet"
                raise UserError(f"loss became {loss_value} at step {step + 1}: training diverged and the step was not "
                                f"applied; {where}. Lower train.lr or check the data, then `tuna train --resume {run_dir}`")
            dist.sum_gradients(model)
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = clip_gradients(model, cfg.max_grad_norm, recipe.optim.clip_per_component)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            lr = scheduler.get_last_lr()[0] / optimizer.param_groups[0]["lr_scale"]  # the base rate, not a group's
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step, tokens, last_loss = step + 1, tokens + step_tokens, loss_value
            seconds = time.perf_counter() - t0
            record = {"step": step, "train/loss": loss_value, "train/lr": lr, "train/grad_norm": grad_norm,
                      "train/tokens_per_s": step_tokens / seconds, "train/tokens": tokens, "epoch": batches.epoch, **step_stats}
            if splits.eval and (step == max_steps or (recipe.eval.every and step % recipe.eval.every == 0)):
                last_eval = evaluate()
                record.update({f"eval/{key}": value for key, value in last_eval.items()})
            metrics.write(record)
            trackers.log(record)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s=f"{step_tokens / seconds:.0f}", refresh=False)
            bar.update(1)
            if cfg.save_every and step % cfg.save_every == 0:
                save_checkpoint()
                last_saved = step
    bar.close()
    trackers.close()
    if last_saved != step:
        save_checkpoint()
    interrupted = step < max_steps
    if interrupted:
        metrics.close()
        say(f"stopped at step {step}; resume with: tuna train --resume {run_dir}")
    else:
        metrics.close()
        with dist.whole_model(model):
            if dist.main:
                save_final(method, model, tokenizer, run_dir)
    result = RunResult(run_dir=str(run_dir), steps=step, tokens=tokens, seconds=time.perf_counter() - started,
                       train_loss=last_loss, eval_loss=last_eval and last_eval.get("loss"),
                       eval_ppl=last_eval and last_eval.get("ppl"), trainable_params=trainable, total_params=total,
                       peak_memory_mb=peak_memory_mb(device), interrupted=interrupted)
    if dist.main:
        (run_dir / rundir.SUMMARY).write_text(json.dumps(asdict(result), indent=1))
        say(f"report: {write_run_report(run_dir, device=str(device))}")
    return result


def save_final(method, model, tokenizer, run_dir: Path) -> None:
    """The final model or adapter, plus the tokenizer, renamed into `final/` once complete."""
    with atomic_directory(run_dir / rundir.FINAL) as tmp:
        method.save_final(model, tmp)
        tokenizer.save_pretrained(tmp)
