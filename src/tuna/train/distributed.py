"""Training on several processes with PyTorch's own engine: torchrun, torch.distributed, FSDP2 and DCP.

`tuna train CONFIG --nproc N` re-runs itself as `torchrun --standalone --nproc-per-node N -m tuna train CONFIG`;
torchrun (one node or several, docs/distributed.md) sets RANK and WORLD_SIZE and `session` joins the group.

What stays equal to one process: an optimizer step takes `grad_accum × W` micro-batches from the one seeded
plan that every rank builds (`data.batch.TrainBatches`), so the global batch is micro_batch_size × grad_accum
× W. Rank r trains on its contiguous block of `grad_accum` of them, and every rank divides by the step weight
of all of them (it has the whole plan), then the gradients are summed over ranks: the step is the one a
single process takes with grad_accum × W micro-batches, and the data position (epoch, cursor) is shared.

- `ddp`: each rank holds the whole model; after the step's backward passes one all-reduce (in flat buckets)
  sums the gradients. Not torch's DistributedDataParallel wrapper: its averaging could be undone by scaling
  the loss, but it only synchronises what runs through the wrapper's own forward, and tuna's objectives
  and methods reach into the model (chunked cross-entropy runs the decoder alone, the reference switches
  the PEFT adapter off, HFT and Chain of LoRA change what gets gradients between steps). The sum is the
  one DDP computes with `no_sync` over accumulation; what is given up is overlapping the last backward
  with communication.
- `fsdp`: FSDP2 (`fully_shard`) on every decoder layer and the whole model, with a MixedPrecisionPolicy
  under bf16; gradients are reduce-scattered as sums.

Checkpoints of a multi-process run are DCP directories (`torch.distributed.checkpoint`), resharded on
load, so a run saved by W processes resumes on any number, one included.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from tuna.atomic import atomic_directory
from tuna.errors import UserError
from tuna.methods import REGISTRY as METHODS
from tuna.train import checkpoint

BUCKET_ELEMENTS = 2**24  # gradients are all-reduced in flat buckets of at most this many elements
SHUTDOWN_SECONDS = 300  # after a Ctrl-C, how long torchrun lets the ranks finish the step and checkpoint


class _Unlogged:
    """Where ranks other than 0 send metrics and tracker records: nowhere (rank 0 holds the same numbers)."""

    def write(self, record: dict) -> None:
        pass

    log = write

    def close(self) -> None:
        pass


UNLOGGED = _Unlogged()


def world_size() -> int:
    """Processes in this run: the joined group's, else what torchrun declared (1 without it)."""
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class Dist:
    """This process's part in a run. With world 1 every method is a no-op, so the loop reads the same."""
    device: torch.device
    rank: int = 0
    world: int = 1
    mode: str | None = None  # "ddp" or "fsdp" when world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def check(self, recipe, method, objective, *, precomputed_reference: bool, precision: str) -> None:
        """Refuse, before training, what several processes cannot do exactly."""
        if self.world == 1:
            return
        if objective.rewrite_train:
            raise UserError(f"objective {objective.name} judges its training data in one process before training; "
                            "run it without --nproc / torchrun")
        if precomputed_reference:
            raise UserError(f"objective {objective.name} with method {method.name} computes the reference log-probs "
                            "once, in one process; run it without --nproc / torchrun, or use a LoRA-family method "
                            "(its reference is the adapter switched off)")
        if self.mode != "fsdp":
            return
        if not method.shardable:
            shardable = [name for name, m in METHODS.items() if m.shardable]
            raise UserError(f"train.distributed: fsdp shards the methods {', '.join(shardable)}; method "
                            f"{method.name} needs train.distributed: ddp")
        if recipe.train.loss_chunk_tokens:
            raise UserError("train.loss_chunk_tokens runs the decoder outside the sharded model's forward; unset it "
                            "or use train.distributed: ddp")
        if objective.kind.varies_by_rank:
            raise UserError(f"objective {objective.name} {objective.kind.varies_by_rank}, which sharded forward "
                            "passes cannot follow; use train.distributed: ddp")
        if precision == "fp16":
            raise UserError("train.distributed: fsdp does not take fp16 (its loss scaler would skip a step on some "
                            "ranks only); use train.precision: bf16")

    def shard(self, model, precision: str) -> None:
        """fsdp: FSDP2 on each decoder layer and the whole model, in place; gradients reduced as sums, since
        each rank's loss is already divided by the global step weight."""
        if self.mode != "fsdp":
            return
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

        from tuna.models.layers import decoder_layers
        from tuna.train.device import DTYPES

        policy = MixedPrecisionPolicy(param_dtype=DTYPES[precision], reduce_dtype=torch.float32) \
            if precision in DTYPES else MixedPrecisionPolicy()
        for layer in decoder_layers(model):
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_gradient_divide_factor(1.0)
                module.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)

    def share(self, micro: list) -> list:
        """This rank's block of the step's micro-batches."""
        per_rank = len(micro) // self.world
        return micro[self.rank * per_rank : (self.rank + 1) * per_rank]

    def sum_gradients(self, model) -> None:
        """ddp: every rank's gradients become their sum over ranks. A parameter that got a gradient on any
        rank gets one everywhere (zeros where it had none), as one process would have given it."""
        if self.mode != "ddp":
            return
        params = [p for p in model.parameters() if p.requires_grad]
        present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=self.device)
        dist.all_reduce(present)
        grads = []
        for p, count in zip(params, present.tolist()):
            if count and p.grad is None:
                p.grad = torch.zeros_like(p)
            if count:
                grads.append(p.grad)
        for bucket in buckets(grads):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            for g, part in zip(bucket, flat.split([g.numel() for g in bucket])):
                g.copy_(part.view(g.shape))

    def sum_step(self, loss: float, tokens: int, stats: dict) -> tuple[float, int, dict]:
        """The step's loss, tokens and stats over all ranks: each rank holds its micro-batches' shares."""
        if self.world == 1:
            return loss, tokens, stats
        keys = sorted(stats)
        values = torch.tensor([loss, tokens, *(stats[k] for k in keys)], dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        loss, tokens, *rest = values.tolist()
        return loss, round(tokens), dict(zip(keys, rest))

    def sum_value(self, value: float) -> float:
        """`value` summed over all ranks (itself with one process)."""
        if self.world == 1:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return float(total.item())

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on one: a Ctrl-C reaches the ranks at slightly different times."""
        if self.world == 1:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value)
        return bool(value.item())

    def from_main(self, value):
        """Rank 0's `value`, on every rank."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    @contextlib.contextmanager
    def whole_model(self, model):
        """fsdp: within the block, rank 0's `model.state_dict()` is the gathered full state (what a method's
        save writes), not its shard. Every rank must enter: gathering is collective."""
        if self.mode != "fsdp":
            yield
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        first: dict[int, str] = {}
        for name, p in model.named_parameters(remove_duplicate=False):  # tied weights stay one tensor, as saved
            if first.setdefault(id(p), name) != name and name in full:
                full[name] = full[first[id(p)]]
        model.state_dict = lambda *args, **kwargs: full
        try:
            yield
        finally:
            del model.state_dict

    def save_checkpoint(self, directory: Path, step: int, model, optimizer, names: list[str], state: dict,
                        keep: int, extra=None) -> Path:
        """One process: the single-process format (`checkpoint.save`). Several: model and optimizer as DCP
        shards written by every rank, the rest (with each rank's RNG states, and what `extra` writes from the
        whole model) by rank 0, renamed into place by rank 0 once all of it is written."""
        if self.world == 1:
            return checkpoint.save(directory, step, model, names, {**state, "optimizer": optimizer.state_dict()}, keep,
                                   extra)
        import torch.distributed.checkpoint as dcp

        model_state, optimizer_state = _state_dicts(model, optimizer, names)
        rng = [None] * self.world
        dist.all_gather_object(rng, state["rng"])
        target = directory / f"step-{step:07d}"
        if self.main:
            with atomic_directory(target) as tmp:
                self.from_main(tmp)
                dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=tmp / checkpoint.SHARDS)
                torch.save({**state, "rng": rng}, tmp / checkpoint.STATE)
                meta = {"step": step, "fingerprint": checkpoint.fingerprint(model, names), "world_size": self.world}
                (tmp / checkpoint.META).write_text(json.dumps(meta, indent=1))
                self.write_whole(model, extra, tmp)
                checkpoint.write_manifest(tmp)  # dcp.save returned: every rank's shards are written
            checkpoint.prune(directory, keep)
        else:  # dcp.save returns once every rank's shards and the metadata are written
            tmp = self.from_main(None)
            dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=tmp / checkpoint.SHARDS)
            self.write_whole(model, extra, tmp)
        self.barrier()  # nobody goes on before the checkpoint is in place
        return target

    def write_whole(self, model, extra, directory: Path) -> None:
        """Rank 0 runs `extra(directory)` on the whole model; under fsdp every rank takes part in gathering it."""
        if extra is None:
            return
        with self.whole_model(model):
            if self.main:
                extra(directory)

    def load_checkpoint(self, path: Path, model, optimizer, names: list[str], optimizer_kind: str) -> dict:
        """Put a checkpoint of either format into the model and optimizer, restore this rank's RNG states
        (a rank the checkpoint has none for keeps its own seed), and return the rest of the state. Optimizer
        state of another kind (`optim.eight_bit` switched since) is left out: the optimizer starts afresh."""
        if not checkpoint.is_sharded(path):
            if self.mode == "fsdp":
                raise UserError(f"checkpoint {path} was written by one process and holds whole tensors; resume it "
                                "with train.distributed: ddp (or one process)")
            state = checkpoint.load(path, model, names)
            if optimizer_kind_of(state) == optimizer_kind:
                optimizer.load_state_dict(state["optimizer"])
            rng = state["rng"] if self.main else None
        else:
            state = _load_shards(path, model, optimizer, names, optimizer_kind)
            rng = state["rng"][self.rank] if self.rank < len(state["rng"]) else None
        if rng is not None:
            checkpoint.set_rng_states(rng)
        return state


def optimizer_kind_of(state: dict) -> str:
    return state.get("optimizer_kind", "adamw")  # checkpoints from before 8-bit AdamW hold AdamW's state


def _state_dicts(model, optimizer, names: list[str]) -> tuple[dict, dict]:
    """The tensors `names` (what the run trains, whatever one step trains: HFT freezes half) and the optimizer
    state, keyed by parameter name and sharded as the model is; frozen weights come from the base model."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer, options=_options())
    wanted = set(names)
    return {name: t for name, t in model_state.items() if name in wanted}, optimizer_state


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(strict=False)  # a checkpoint holds the trained tensors, not the whole model


def _load_shards(path: Path, model, optimizer, names: list[str], optimizer_kind: str) -> dict:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    checkpoint.check_fingerprint(path, model, names)
    state = checkpoint.load_state(path)
    with_optimizer = optimizer_kind_of(state) == optimizer_kind
    model_state, optimizer_state = _state_dicts(model, optimizer, names)
    try:
        # a parameter no step had updated yet (HFT's other half) had no optimizer state, and gets none
        stored = dcp.FileSystemReader(path / checkpoint.SHARDS).read_metadata().state_dict_metadata
        has_state = {key.rsplit(".", 1)[0] for key in stored if key.startswith("optimizer.state.")}
        optimizer_state["state"] = {name: value for name, value in optimizer_state["state"].items()
                                    if f"optimizer.state.{name}" in has_state}
        content = {"model": model_state, "optimizer": optimizer_state} if with_optimizer else {"model": model_state}
        with warnings.catch_warnings():  # one process loading a multi-process checkpoint is the intent
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(content, checkpoint_id=path / checkpoint.SHARDS)
    except (CheckpointException, OSError) as exc:  # DCP's is a BaseException of many lines, the cause last
        reason = str(exc).strip().splitlines()[-1]
        raise UserError(f"checkpoint {path} cannot be loaded into this run's model and optimizer ({reason})") from None
    if with_optimizer:
        set_state_dict(model, optimizer, model_state_dict=content["model"], optim_state_dict=content["optimizer"],
                       options=_options())
    else:
        set_model_state_dict(model, content["model"], options=_options())
    return state


def buckets(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive tensors of one dtype, at most BUCKET_ELEMENTS elements a bucket (a larger tensor alone)."""
    groups: list[list[torch.Tensor]] = []
    size = 0
    for t in tensors:
        if not groups or groups[-1][0].dtype != t.dtype or size + t.numel() > BUCKET_ELEMENTS:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.numel()
    return groups


@contextlib.contextmanager
def session(mode: str, device: torch.device):
    """This process's `Dist`. Under torchrun (WORLD_SIZE > 1) it joins the process group (nccl on CUDA, one
    GPU per local rank; gloo on the CPU) and tears it down however training ends, so that a rank that
    fails does not leave the others waiting; a group the caller made is used and left alone."""
    if world_size() == 1:
        yield Dist(device)
        return
    if device.type == "cuda":
        if device.index is not None:
            raise UserError(f"train.device {device} names one GPU; a run of several processes puts each on its own "
                            "(cuda:LOCAL_RANK): use device: cuda or auto")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UserError(f"a run of several processes trains on CUDA GPUs or the CPU, not on {device.type}")
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    try:
        yield Dist(device, dist.get_rank(), dist.get_world_size(), mode)
    finally:
        if owned:
            dist.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> int:
    """Run `tuna ARGV` as `nproc` processes on this machine under torchrun; its exit status.

    torchrun starts each rank in a session of its own and forwards a Ctrl-C to all of them, which agree to
    stop after the current step and checkpoint; this process only waits for it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               f"--shutdown-timeout={SHUTDOWN_SECONDS}", "-m", "tuna", *argv]
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    try:
        code = subprocess.call(command)
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:  # torchrun reports the signal as its own failure; the ranks stopped cleanly
        print(f"tuna: interrupted; resume with: tuna train --resume RUN_DIR --nproc {nproc}", file=sys.stderr)
        return 130
    return code
