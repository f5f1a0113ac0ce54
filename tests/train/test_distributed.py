"""Training as two processes (torchrun, gloo on the CPU): every step equals the single-process step at the
same global batch (micro_batch_size × grad_accum × processes), for ddp and fsdp, LoRA and full; rank 0
alone writes the run; a Ctrl-C reaching one rank stops both; checkpoints resume on one process."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tuna.config import validate_recipe
from tuna.errors import UserError
from tuna.objectives import REGISTRY as OBJECTIVES
from tuna.methods import REGISTRY as METHODS
from tuna.train import checkpoint
from tuna.train.distributed import Dist
from tuna.train.loop import train
from tuna.rundir import read_metrics

TOLERANCE = 1e-4  # fp32; the sums over ranks add the same terms in another order

# One rank of a torchrun launch: the jobs in argv[1] in one process group, results to argv[2] after each.
# A job may send this rank a Ctrl-C (`interrupt`) or crash it (`crash`) at [rank, n-th loss call].
WORKER = r'''
import dataclasses, json, os, signal, sys
import torch
import torch.distributed as dist
from tuna.config import validate_recipe
from tuna.objectives import REGISTRY
from tuna.train.distributed import Dist
from tuna.train.loop import train

dist.init_process_group("gloo")
rank, results = dist.get_rank(), {}

# sum_gradients: `a` has a gradient on both ranks, `b` on rank 0 only, `c` on none
m = torch.nn.Module()
for name, size in (("a", 3), ("b", 2), ("c", 2)):
    setattr(m, name, torch.nn.Parameter(torch.zeros(size)))
m.a.grad = torch.full((3,), float(rank + 1))
if rank == 0:
    m.b.grad = torch.tensor([5.0, 7.0])
Dist(torch.device("cpu"), rank, 2, "ddp").sum_gradients(m)
grads = [None, None]
dist.all_gather_object(grads, {n: None if p.grad is None else p.grad.tolist() for n, p in m.named_parameters()})
results["sum_gradients"] = grads

for job in json.load(open(sys.argv[1])):
    real, calls = REGISTRY["sft"], []

    def loss(*args, _job=job):
        calls.append(1)
        if [rank, len(calls)] == _job.get("interrupt"):
            os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C that reaches this rank alone, mid-step
        if [rank, len(calls)] == _job.get("crash"):
            raise RuntimeError(f"simulated crash on rank {rank}")
        return real.loss(*args)

    REGISTRY["sft"] = dataclasses.replace(real, loss=loss)
    results[job["name"]] = train(validate_recipe(job["recipe"]), resume=job.get("resume", False),
                                 progress=False).interrupted
    REGISTRY["sft"] = real
    if rank == 0:
        json.dump(results, open(sys.argv[2], "w"))
dist.destroy_process_group()
'''

LORA = {"method": "lora", "lora": {"dropout": 0.0}}
FULL = {"method": "full"}
HFT = {"method": "hft", "hft": {"rounds": 1}}  # one half trains all run: the other half never has optimizer state
PACKED = {**LORA, "data": {"batching": "packed", "max_tokens": 64}, "train": {"loss_weighting": "sequence"}}


def raw_recipe(model_dir: Path, data: Path, out: Path, base: dict, **train) -> dict:
    raw = {"model": str(model_dir), "data": {"path": str(data), "eval_split": 0.2}, "eval": {"every": 3},
           "train": {"max_steps": 6, "lr": 1e-2, "device": "cpu", "precision": "fp32", "save_every": 2, "seed": 0},
           "output_dir": str(out)}
    for key, value in base.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    raw["train"].update(train)
    return raw


def losses(run_dir: Path, key: str = "train/loss") -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(run_dir / "metrics.jsonl") if key in r}


def max_difference(got: Path, expected: Path, steps: list[int]) -> float:
    """Largest |loss difference| over `steps`, after checking both runs logged exactly those steps and the
    losses moved (so equality means something)."""
    a, b = losses(got), losses(expected)
    assert sorted(a) == steps and set(steps) <= set(b)
    assert len({round(b[s], 6) for s in steps}) > 1
    return max(abs(a[s] - b[s]) for s in steps)


def torchrun(args: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    """Run a launch to its end; a hang fails on the timeout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=420)
    assert (done.returncode == 0) == ok, done.stdout[-2000:] + done.stderr[-6000:]
    return done


def truncate_to_step_4(run: Path, copy: Path) -> None:
    """A copy of a finished six-step run as a crash after step 4 would have left it."""
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints" / "step-0000006")
    shutil.rmtree(copy / "final")


@pytest.fixture(scope="module")
def runs(tiny_dirs, tmp_path_factory):
    """Two-process runs (one torchrun launch of several jobs, and one `tuna train --nproc 2`) and the
    single-process runs they must equal."""
    root = tmp_path_factory.mktemp("distributed")
    data = root / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"what is {i} + {i}?"},
                                                     {"role": "assistant", "content": f"{2 * i}"}]}) + "\n"
                            for i in range(40)))
    model = tiny_dirs["llama"]
    recipe = lambda name, base, **train: raw_recipe(model, data, root / name, base, **train)
    for name, base, micro, accum in (("lora-1", LORA, 2, 2), ("full-1", FULL, 2, 2), ("full-1x4", FULL, 1, 4),
                                     ("packed-1", PACKED, 1, 2)):
        train(validate_recipe(recipe(name, base, micro_batch_size=micro, grad_accum=accum)), progress=False)
    train(validate_recipe(recipe("full-1-bf16", FULL, micro_batch_size=4, precision="bf16")), progress=False)
    truncate_to_step_4(root / "lora-1", root / "lora-1to2")  # a single-process checkpoint, resumed by two

    jobs = [
        {"name": "lora-fsdp",
         "recipe": recipe("lora-fsdp", LORA, micro_batch_size=2, grad_accum=1, distributed="fsdp")},
        {"name": "full-fsdp",
         "recipe": recipe("full-fsdp", FULL, micro_batch_size=2, grad_accum=1, distributed="fsdp")},
        {"name": "full-fsdp-bf16",
         "recipe": recipe("full-fsdp-bf16", FULL, micro_batch_size=2, distributed="fsdp", precision="bf16")},
        {"name": "full-ddp", "recipe": recipe("full-ddp", FULL, micro_batch_size=1, grad_accum=2)},
        {"name": "packed-ddp", "recipe": recipe("packed-ddp", PACKED, micro_batch_size=1, grad_accum=1)},
        {"name": "stop", "recipe": recipe("stop", LORA, micro_batch_size=2, grad_accum=1), "interrupt": [1, 3]},
        {"name": "lora-1to2", "recipe": recipe("lora-1to2", LORA, micro_batch_size=2, grad_accum=1), "resume": True},
        {"name": "hft-ddp", "recipe": recipe("hft-ddp", HFT, micro_batch_size=2, grad_accum=1)},
        {"name": "crash", "recipe": recipe("crash", LORA, micro_batch_size=2, grad_accum=1), "crash": [1, 3]},
    ]
    (root / "jobs.json").write_text(json.dumps(jobs))
    (root / "worker.py").write_text(WORKER)
    group = torchrun([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                      "worker.py", "jobs.json", "results.json"], root, ok=False)  # the last job fails

    config = root / "lora-ddp.yaml"
    config.write_text(yaml.safe_dump(recipe("lora-ddp", LORA, micro_batch_size=2, grad_accum=1)))
    cli = torchrun([sys.executable, "-m", "tuna", "train", str(config), "--nproc", "2", "--no-progress"], root)
    return {"root": root, "recipe": recipe, "cli": cli, "group": group,
            "results": json.loads((root / "results.json").read_text())}


@pytest.mark.parametrize("run, single", [("lora-ddp", "lora-1"), ("lora-fsdp", "lora-1"), ("full-ddp", "full-1x4"),
                                         ("full-fsdp", "full-1"), ("packed-ddp", "packed-1"),
                                         ("lora-1to2", "lora-1")])  # the last: steps 5-6 by two processes
def test_two_processes_take_the_single_process_steps(runs, run, single):
    root = runs["root"]
    train_diff = max_difference(root / run, root / single, list(range(1, 7)))
    eval_a, eval_b = losses(root / run, "eval/loss"), losses(root / single, "eval/loss")
    assert sorted(eval_a) == [3, 6]
    eval_diff = max(abs(eval_a[s] - eval_b[s]) for s in eval_a)  # the weights after step 6 agree too
    norm_a, norm_b = losses(root / run, "train/grad_norm"), losses(root / single, "train/grad_norm")
    norm_diff = max(abs(norm_a[s] / norm_b[s] - 1) for s in norm_a)  # summed, not averaged, over ranks
    print(f"\n{run} vs {single}: max |train loss diff| {train_diff:.3g}, max |eval loss diff| {eval_diff:.3g}, "
          f"max relative grad-norm diff {norm_diff:.3g}")
    assert train_diff < TOLERANCE and eval_diff < TOLERANCE and norm_diff < TOLERANCE


def test_fsdp_under_bf16_follows_the_single_process_bf16_run(runs):
    """Two sharded processes under bf16 against one process under bf16 autocast: the same steps within
    bf16 rounding (the two differ in where they round, so not bit for bit)."""
    root = runs["root"]
    steps = list(range(1, 7))
    to_bf16 = max_difference(root / "full-fsdp-bf16", root / "full-1-bf16", steps)
    to_fp32 = max_difference(root / "full-fsdp-bf16", root / "full-1", steps)
    print(f"\nfsdp bf16: max |loss diff| {to_bf16:.3g} to one bf16 process, {to_fp32:.3g} to one fp32 process")
    assert to_bf16 < 2e-2


def test_the_fsdp_bf16_policy_computes_in_bf16_and_keeps_float32_shards(tiny_model_dir):
    """FSDP2's MixedPrecisionPolicy as `shard` sets it: layers see bf16 weights, the sharded parameters
    and their gradients (what the optimizer steps) stay float32."""
    import torch.distributed as dist

    from tuna.models.load import load_base

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        model, _ = load_base(str(tiny_model_dir))
        Dist(torch.device("cpu"), 0, 1, "fsdp").shard(model, "bf16")
        seen = {}
        projection = model.model.layers[0].self_attn.q_proj
        projection.register_forward_pre_hook(lambda module, args: seen.update(weight=module.weight.dtype))
        ids = torch.tensor([[5, 6, 7, 8]])
        model(input_ids=ids, labels=ids).loss.backward()
    finally:
        dist.destroy_process_group()
    assert seen == {"weight": torch.bfloat16}
    assert type(projection.weight).__name__ == "DTensor"
    assert projection.weight.dtype == projection.weight.grad.dtype == torch.float32


def test_rank_0_alone_writes_the_run_and_prints(runs):
    run = runs["root"] / "lora-ddp"
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert (run / "final" / "adapter_config.json").is_file() and (run / "summary.json").is_file()
    assert json.loads((run / "summary.json").read_text())["steps"] == 6
    assert [p.name for p in checkpoint.checkpoints(run / "checkpoints")] == ["step-0000004", "step-0000006"]
    assert checkpoint.is_sharded(run / "checkpoints" / "step-0000006")
    assert runs["cli"].stdout.count("done: 6 steps") == 1
    assert runs["cli"].stderr.count("tuna: model ") == 1 and "2 processes (ddp)" in runs["cli"].stderr
    full = runs["root"] / "full-fsdp" / "final"  # gathered from the shards into one plain checkpoint
    assert (full / "config.json").is_file() and list(full.glob("*.safetensors"))


def test_a_ctrl_c_on_one_rank_stops_both_after_the_same_step(runs):
    run = runs["root"] / "stop"
    assert runs["results"]["stop"] is True  # interrupted, on rank 0, though the signal reached rank 1
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]
    assert checkpoint.checkpoints(run / "checkpoints")[-1].name == "step-0000003"
    assert not (run / "final").exists()


def test_a_rank_that_fails_ends_the_launch_instead_of_hanging(runs):
    assert "simulated crash on rank 1" in runs["group"].stderr
    assert set(runs["results"]) >= {"stop", "lora-1to2"} and "crash" not in runs["results"]
    run = runs["root"] / "crash"  # died in step 3: the step-2 checkpoint stands, nothing half-written
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000002"]
    assert not (run / "final").exists()


def test_gradients_are_summed_over_ranks(runs):
    for rank in runs["results"]["sum_gradients"]:  # what each rank holds afterwards
        assert rank == {"a": [3.0, 3.0, 3.0], "b": [5.0, 7.0], "c": None}


@pytest.mark.parametrize("run, base, single", [("lora-ddp", LORA, "lora-1"), ("full-fsdp", FULL, "full-1"),
                                               ("hft-ddp", HFT, "hft-ddp")])
def test_a_two_process_checkpoint_resumes_on_one_process(runs, tmp_path, run, base, single):
    """Step 4 of the two-process run, resumed alone with grad_accum 2: steps 5-6 as the uninterrupted run's."""
    resumed = tmp_path / run
    truncate_to_step_4(runs["root"] / run, resumed)
    recipe = validate_recipe({**runs["recipe"](run, base, micro_batch_size=2, grad_accum=2), "output_dir": str(resumed)})
    assert train(recipe, resume=True, progress=False).steps == 6
    diff = max_difference(resumed, runs["root"] / single, list(range(1, 7)))
    print(f"\n{run} resumed from step 4 on one process vs {single}: max |train loss diff| {diff:.3g}")
    assert diff < TOLERANCE


@pytest.mark.parametrize("run", ["lora-ddp", "lora-fsdp"])
def test_a_two_process_checkpoint_holds_the_whole_adapter(runs, run):
    """Rank 0 writes the checkpoint's PEFT adapter from the whole model (gathered under fsdp, not its shard):
    the last checkpoint's is final/'s, with the tensors of the single-process run's."""
    from safetensors.torch import load_file

    root = runs["root"]
    last = root / run / "checkpoints" / "step-0000006"
    assert checkpoint.damage(last) is None
    saved = load_file(last / checkpoint.ADAPTER / "adapter_model.safetensors")
    final = load_file(root / run / "final" / "adapter_model.safetensors")
    single = load_file(root / "lora-1" / "final" / "adapter_model.safetensors")
    assert saved.keys() == final.keys() == single.keys()
    assert all(torch.equal(saved[k], final[k]) and saved[k].shape == single[k].shape for k in final)


def test_a_checkpoint_that_does_not_fit_is_refused(runs, tmp_path):
    other = tmp_path / "other"
    truncate_to_step_4(runs["root"] / "full-fsdp", other)
    lora = validate_recipe({**runs["recipe"]("x", LORA, micro_batch_size=2, grad_accum=2), "output_dir": str(other)})
    with pytest.raises(UserError, match="was made for a different model or method"):
        train(lora, resume=True, progress=False)
    broken = tmp_path / "broken"
    truncate_to_step_4(runs["root"] / "full-fsdp", broken)
    for shard in (broken / "checkpoints" / "step-0000004" / checkpoint.SHARDS).glob("*.distcp"):
        shard.unlink()
    full = validate_recipe({**runs["recipe"]("x", FULL, micro_batch_size=2, grad_accum=2), "output_dir": str(broken)})
    assert "distcp is missing" in checkpoint.damage(broken / "checkpoints" / "step-0000004")  # the manifest sees it
    with pytest.raises(UserError, match="no checkpoint in .* can be used"):
        train(full, resume=True, progress=False)
    checkpoint.write_manifest(broken / "checkpoints" / "step-0000004")  # past the manifest, DCP itself refuses
    with pytest.raises(UserError, match="cannot be loaded into this run's model and optimizer"):
        train(full, resume=True, progress=False)


@pytest.mark.parametrize("method, objective, train_knobs, message", [
    ("sparse", "sft", {}, "fsdp shards the methods"),
    ("lora", "sft", {"loss_chunk_tokens": 16}, "loss_chunk_tokens runs the decoder outside"),
    ("lora", "grpo", {}, "samples completions of different lengths"),
    ("full", "sft", {"precision": "fp16"}, "fsdp does not take fp16"),
])
def test_what_sharding_cannot_do_is_refused(tiny_model_dir, method, objective, train_knobs, message):
    recipe = validate_recipe({"model": str(tiny_model_dir), "method": method, "train": train_knobs})
    sharded = Dist(torch.device("cpu"), 0, 2, "fsdp")
    with pytest.raises(UserError, match=message):
        sharded.check(recipe, METHODS[method], OBJECTIVES[objective], precomputed_reference=False,
                      precision=recipe.train.precision)
    Dist(torch.device("cpu")).check(recipe, METHODS[method], OBJECTIVES[objective], precomputed_reference=False,
                                    precision=recipe.train.precision)  # one process: nothing to refuse


def test_objectives_that_prepare_in_one_process_are_refused(tiny_model_dir):
    recipe = validate_recipe({"model": str(tiny_model_dir), "method": "full", "objective": "dpo"})
    replicated = Dist(torch.device("cpu"), 1, 2, "ddp")
    with pytest.raises(UserError, match="computes the reference log-probs once"):
        replicated.check(recipe, METHODS["full"], OBJECTIVES["dpo"], precomputed_reference=True, precision="fp32")
    with pytest.raises(UserError, match="judges its training data in one process"):
        replicated.check(recipe, METHODS["full"], OBJECTIVES["self_sft"], precomputed_reference=False,
                         precision="fp32")


@pytest.mark.parametrize("argv", [
    ["train", "c.yaml", "--set", "train.lr=1e-3", "--set", "lora.r=4", "--no-progress"],
    ["train", "--resume", "runs/x", "--debug"],
    ["train", "c.yaml", "--resume"],
])
def test_nproc_relaunches_the_same_train_command(argv):
    from tuna.cli import build_parser, train_argv

    args = build_parser().parse_args(argv + ["--nproc", "2"])
    assert args.nproc == 2 and train_argv(args) == argv  # what each of the processes runs
