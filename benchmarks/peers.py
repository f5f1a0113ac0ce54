"""tuna, TRL and transformers' Trainer + PEFT doing the same fine-tuning, one after another, in one run.

    make bench-peers                                         # CPU: the embedded SmolLM2-135M-Instruct
    python benchmarks/peers.py --modes lora --steps 4        # fewer rows or steps
    python benchmarks/peers.py --shape llama-1b --device cuda  # a GPU (make bench-gpu): Llama-3.2-1B's shape

The work: the embedded model (SmolLM2-135M-Instruct, saved once as a safetensors directory so every
tool loads the same fp32 weights), LoRA (tuna's defaults: r 16, alpha 32, dropout 0.05, all linear
layers) and full fine-tuning, on a chat set generated here: 400 conversations of 50 to 1,500 tokens,
the user's turn about a third of each, the loss on the assistant's turn. Nothing is downloaded. With
`--shape llama-1b`, the model is a randomly initialised Llama-3.2-1B shape (128k vocabulary) instead,
fed the same token ids. On CUDA with liger-kernel installed, a fourth row runs TRL with
`use_liger_kernel`.

Held equal, and checked before any timing:
- the token ids and loss targets: tuna renders the JSONL itself; TRL and the Trainer get those
  renderings pre-tokenized, and their collators are checked to produce the same labels;
- the order: every tool takes the same examples a step (`--batch`, 4 by default: at 8, the padded
  peers need more than this 24 GB machine has), in file order (tuna's seeded shuffle and
  the Trainer's random sampler are both replaced by that order, so the loss curves are comparable);
- the optimizer (AdamW, constant lr, no warm-up, no decay, clipping at 1.0), the precision (fp32 on
  the CPU, bf16 autocast on CUDA), the LoRA adapters' initial values (seed 0 before PEFT draws them)
  and no gradient checkpointing (tuna's default; TRL's default of checkpointing is turned off, and on
  the CPU its bf16, so the three do the same arithmetic).
What differs is only what each tool does by default with a step of 8 examples:
- tuna: its default batching (`data.batching: auto`): the 8 examples packed into one row, with
  per-example attention, and nothing else set;
- Trainer + PEFT: `DataCollatorForSeq2Seq`, each micro-batch padded to its longest example;
- TRL's SFTTrainer: its fastest exact configuration here. Padding-free (one flattened row with
  `position_ids`) is used when it is exact on this device, which is checked before timing: the loss of
  a padding-free batch must equal the padded one's. Otherwise plain padding. Its own loss
  (`chunked_nll` by default) is kept. With `--liger`, TRL's `use_liger_kernel` is on.

Measured per tool, each in its own process: real (non-padding) tokens per CPU-second (the process's
user + system time over all threads) and per wall-second, from the end of step 1 to the end of the
last step; peak RSS (`ru_maxrss`, the whole process, read at the last step's end); the per-step loss.
The ratios are tuna over each peer, and the loss curves' largest difference over the first 5 steps.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MODES = ("lora", "full")
TOOLS = ("tuna", "trl", "trainer")
LABELS = {"tuna": "tuna (defaults)", "trl": "TRL SFTTrainer", "trainer": "Trainer + PEFT", "trl-liger": "TRL + Liger"}
LORA = dict(r=16, alpha=32.0, dropout=0.05)
LEARNING_RATE = {"lora": 2e-4, "full": 2e-5}
MAX_TOKENS = 2048
WORDS = ("river stone bright quiet market window garden letter engine silver morning paper orange winter "
         "number signal forest bridge candle harbor mountain pencil lantern meadow rocket thunder velvet "
         "island copper shadow marble ladder basket feather planet garden compass tunnel crystal violin "
         "anchor blanket castle dragon falcon glacier hammer jungle kettle lemon mirror needle oyster").split()


# data --------------------------------------------------------------------------------------------------------

def make_records(n: int, seed: int, tokenizer) -> list[dict]:
    """`n` chat records whose rendered length is drawn uniformly from 50..1500 tokens."""
    from tuna.data.render import render_records

    rng = random.Random(seed)
    records = []
    for _ in range(n):
        target = rng.randint(50, 1500)
        words = lambda k: " ".join(rng.choice(WORDS) for _ in range(max(1, k)))
        record = {"messages": [{"role": "user", "content": "Rewrite these notes: " + words(target // 3 - 12)},
                               {"role": "assistant", "content": words(target - target // 3 - 12)}]}
        while True:  # trim the answer until the rendering is within the target
            (rendered,), _ = render_records([record], "messages", tokenizer, train_on="completion",
                                            max_tokens=MAX_TOKENS, overflow="truncate")
            excess = len(rendered.input_ids) - target
            if excess <= 0:
                break
            answer = record["messages"][1]["content"].split()
            record["messages"][1]["content"] = " ".join(answer[: max(1, len(answer) - excess)])
        records.append(record)
    return records


def prepare(workdir: Path, n: int, shape: str | None) -> list:
    """The model directory and the chat JSONL every tool reads; returns tuna's renderings of it."""
    from tuna.data.render import render_records
    from tuna.models.load import load_base

    model, tokenizer = load_base("smollm2-135m")
    if shape:  # the same tokenizer's ids, into a random model of another shape
        from batching import SHAPES
        from transformers import AutoModelForCausalLM, LlamaConfig

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(LlamaConfig(
            **SHAPES[shape], max_position_embeddings=MAX_TOKENS, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id))
    model.save_pretrained(workdir / "model")
    tokenizer.save_pretrained(workdir / "model")
    records = make_records(n, seed=1, tokenizer=tokenizer)
    (workdir / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rendered, _ = render_records(records, "messages", tokenizer, train_on="completion", max_tokens=MAX_TOKENS,
                                 overflow="truncate")
    (workdir / "tokens.json").write_text(json.dumps([[r.input_ids, r.labels] for r in rendered]))
    return rendered


def peer_dataset(workdir: Path):
    from datasets import Dataset

    pairs = json.loads((workdir / "tokens.json").read_text())
    return Dataset.from_dict({"input_ids": [ids for ids, _ in pairs], "labels": [labels for _, labels in pairs]})


def check_targets(workdir: Path, rendered: list, batch: int, device: str) -> bool:
    """The peers' collators give tuna's labels, and whether TRL's padding-free batches are exact here
    (the loss of one flattened row equals the padded batch's). Raises when the labels differ."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    examples = [{"input_ids": r.input_ids, "labels": r.labels} for r in rendered[:batch]]
    padded = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(examples)
    seq2seq = DataCollatorForSeq2Seq(tokenizer)([dict(e, attention_mask=[1] * len(e["input_ids"])) for e in examples])
    for row, r in enumerate(rendered[:batch]):
        n = len(r.input_ids)
        for name, collated in (("TRL", padded), ("Trainer", seq2seq)):
            if collated["labels"][row, :n].tolist() != r.labels or (collated["labels"][row, n:] != -100).any():
                raise SystemExit(f"{name}'s collator gives other loss targets than tuna for example {row}")
    flat = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(examples)
    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32).to(device).eval()
    with torch.no_grad():
        padded_loss, flat_loss = (float(model(**{k: v.to(device) for k, v in b.items() if torch.is_tensor(v)}).loss)
                                  for b in (padded, flat))  # newer TRL collators add counts beside the tensors
    exact = abs(padded_loss - flat_loss) < 1e-4
    return exact


# the three tools, each in its own process --------------------------------------------------------------------

class StepClock:
    """Wall time, process CPU time and cumulative real tokens at each optimizer step's end."""

    def __init__(self, device: str):
        self.cuda, self.marks, self.losses, self.peak_mib = device.startswith("cuda"), [], [], 0.0

    def tick(self, tokens: int) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.marks.append((time.perf_counter(), usage.ru_utime + usage.ru_stime, tokens))
        self.peak_mib = (torch.cuda.max_memory_allocated() if self.cuda else usage.ru_maxrss * 1024) / 2**20

    def result(self) -> dict:
        """The tools count tokens differently (the Trainer's "non_padding" also drops real tokens equal to the
        pad id), so each reports its times, and the parent divides the same real-token count by them."""
        (w0, c0, _), (w1, c1, _) = self.marks[0], self.marks[-1]
        return {"steps": len(self.marks), "cpu_s": c1 - c0, "wall_s": w1 - w0, "peak_mib": self.peak_mib,
                "losses": self.losses}


def in_file_order(trainer_class):
    """The Trainer (or SFTTrainer) with its random sampler replaced by file order, as for every tool here."""
    from torch.utils.data import SequentialSampler

    class InFileOrder(trainer_class):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    return InFileOrder


def run_tuna(args, clock: StepClock) -> None:
    import tuna.data.batch
    from tuna.config import validate_recipe
    from tuna.train import metrics
    from tuna.train.loop import train

    write = metrics.MetricsLog.write

    def timed_write(self, record):
        clock.tick(record["train/tokens"])
        clock.losses.append(record["train/loss"])
        write(self, record)

    metrics.MetricsLog.write = timed_write
    # file order, `batch` examples a step: each step's examples, packed into one row by the default batching
    tuna.data.batch.epoch_plan = lambda lengths, *_: [list(range(s, min(s + args.batch, len(lengths))))
                                                      for s in range(0, len(lengths), args.batch)]
    workdir = Path(args.workdir)
    raw = {"model": str(workdir / "model"), "method": args.mode,
           "data": {"path": str(workdir / "data.jsonl"), "max_tokens": MAX_TOKENS, "eval_split": 0.0},
           "train": {"max_steps": args.steps, "micro_batch_size": args.batch, "lr": LEARNING_RATE[args.mode],
                     "schedule": "constant", "warmup_ratio": 0.0, "max_grad_norm": 1.0, "device": args.device,
                     "precision": "bf16" if args.device.startswith("cuda") else "fp32", "save_every": 0,
                     "seed": 0},
           "eval": {"every": 0}, "output_dir": str(workdir / f"run-tuna-{args.mode}")}
    if args.mode == "lora" and args.lora_dropout != LORA["dropout"]:
        raw["lora"] = {"dropout": args.lora_dropout}
    recipe = validate_recipe(raw)
    if recipe.batching != "packed_step":
        raise SystemExit(f"tuna's default batching resolved to {recipe.batching}, not packed")
    train(recipe, progress=False)


def peer_model(args):
    from transformers import AutoModelForCausalLM, set_seed

    set_seed(0)  # before PEFT draws the adapters, as tuna seeds before it does
    model = AutoModelForCausalLM.from_pretrained(Path(args.workdir) / "model", dtype=torch.float32)
    if args.mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"],
                                                 lora_dropout=args.lora_dropout, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    return model


def peer_callback(clock: StepClock):
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick(state.num_input_tokens_seen)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                clock.losses.append(logs["loss"])

    return Clock()


def common_arguments(args) -> dict:
    """The TrainingArguments every peer shares: the same optimizer, schedule, precision and steps as tuna."""
    return dict(output_dir=str(Path(args.workdir) / f"run-{args.tool}-{args.mode}"), max_steps=args.steps,
                per_device_train_batch_size=args.batch, learning_rate=LEARNING_RATE[args.mode],
                lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                bf16=args.device.startswith("cuda"),
                use_cpu=args.device == "cpu", seed=0, save_strategy="no", report_to="none", disable_tqdm=True,
                logging_steps=1, include_num_input_tokens_seen="non_padding", gradient_checkpointing=False)


def run_trainer(args, clock: StepClock) -> None:
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(Path(args.workdir) / "model")
    data = peer_dataset(Path(args.workdir))
    data = data.add_column("attention_mask", [[1] * len(ids) for ids in data["input_ids"]])
    trainer = in_file_order(Trainer)(model=peer_model(args), args=TrainingArguments(**common_arguments(args)),
                                     train_dataset=data, callbacks=[peer_callback(clock)],
                                     data_collator=DataCollatorForSeq2Seq(tokenizer))
    trainer.train()


def run_trl(args, clock: StepClock) -> None:
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(Path(args.workdir) / "model")
    config = SFTConfig(**common_arguments(args), padding_free=args.padding_free, max_length=None,
                       use_liger_kernel=args.tool == "trl-liger")
    trainer = in_file_order(SFTTrainer)(model=peer_model(args), args=config, train_dataset=peer_dataset(Path(args.workdir)),
                                        processing_class=tokenizer, callbacks=[peer_callback(clock)])
    trainer.train()


RUNNERS = {"tuna": run_tuna, "trl": run_trl, "trainer": run_trainer, "trl-liger": run_trl}


def run_child(args) -> dict:
    clock = StepClock(args.device)
    RUNNERS[args.tool](args, clock)
    if len(clock.marks) < 2:
        raise SystemExit(f"only {len(clock.marks)} steps were timed; raise --steps")
    return clock.result()


# the parent --------------------------------------------------------------------------------------------------

def child_command(args, workdir: str, tool: str, mode: str, padding_free: bool) -> list[str]:
    return [sys.executable, __file__, "--device", args.device, "--steps", str(args.steps), "--batch", str(args.batch),
            "--examples", str(args.examples), "--workdir", workdir, "--tool", tool, "--mode", mode,
            "--lora-dropout", str(args.lora_dropout),
            *(["--padding-free"] if padding_free else [])]


def print_row(mode: str, tool: str, row: dict) -> None:
    if "error" in row:
        print(f"{mode:5} {LABELS[tool]:17} {row['error']}", flush=True)
        return
    print(f"{mode:5} {LABELS[tool]:17} {row['steps']:>5} {row['tokens']:>9,} {row['per_cpu_s']:>10.1f} "
          f"{row['per_wall_s']:>11.1f} {row['peak_mib']:>9,.0f} {row['losses'][-1]:>10.4f}", flush=True)


def print_ratios(mode: str, rows: dict) -> None:
    ours = rows["tuna"]
    for peer in [tool for tool in rows if tool != "tuna"]:
        theirs = rows[peer]
        if "error" in ours or "error" in theirs:
            continue
        curve = max(abs(a - b) for a, b in zip(ours["losses"][:5], theirs["losses"][:5]))
        print(f"{mode:5} {'tuna / ' + peer:17} {'':>5} {'':>9} {ours['per_cpu_s'] / theirs['per_cpu_s']:>9.2f}x "
              f"{ours['per_wall_s'] / theirs['per_wall_s']:>10.2f}x {ours['peak_mib'] / theirs['peak_mib']:>8.2f}x "
              f"  loss curves differ by at most {curve:.1e} over the first {min(5, len(ours['losses']))} steps",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--examples", type=int, default=400, help="conversations generated (50..1500 tokens)")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run; step 1 is warm-up")
    parser.add_argument("--batch", type=int, default=4, help="examples per step, for every tool")
    parser.add_argument("--shape", choices=("llama-1b",), help="a random model of this shape instead of the "
                        "embedded one (the GPU benchmark)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--lora-dropout", type=float, default=LORA["dropout"], help="every tool's LoRA dropout "
                        "(default tuna's, 0.05); at 0 the LoRA loss curves can agree, as no tool draws masks")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--tool", choices=RUNNERS, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--padding-free", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tool:  # a child process: one measurement, as one JSON line
        print(json.dumps(run_child(args)))
        return
    if args.steps < 2:
        parser.error("--steps must be at least 2: step 1 is warm-up")
    try:
        import trl
    except ImportError:
        raise SystemExit("benchmarks/peers.py needs TRL: pip install -e '.[bench]'") from None
    import peft
    import transformers

    tools = args.tools.split(",")
    if args.device.startswith("cuda") and importlib.util.find_spec("liger_kernel") is not None:
        tools.append("trl-liger")
    model = f"random {args.shape} shape" if args.shape else "SmolLM2-135M-Instruct (embedded)"
    print(f"peers benchmark: {model}, device {args.device}, {torch.get_num_threads()} "
          f"threads; {args.steps} steps of {args.batch} examples in file order; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, peft {peft.__version__}, trl {trl.__version__}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="tuna-peers-") as workdir:
        rendered = prepare(Path(workdir), args.examples, args.shape)
        lengths = [len(r.input_ids) for r in rendered]
        used = lengths[args.batch : args.steps * args.batch]
        print(f"data: {len(lengths)} conversations, {min(lengths)}..{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.0f}); "
              f"the timed steps hold {sum(used):,} tokens", flush=True)
        padding_free = check_targets(Path(workdir), rendered, args.batch, args.device)
        print("checked: TRL's and the Trainer's collators give tuna's loss targets; TRL padding-free is "
              + ("exact here, so TRL runs padding-free" if padding_free else
                 "not exact here (its loss differs from the padded batch's), so TRL runs padded"), flush=True)
        print(f"\n{'mode':5} {'tool':17} {'steps':>5} {'tokens':>9} {'tok/CPU-s':>10} {'tok/wall-s':>11} "
              f"{'peak MiB':>9} {'last loss':>10}", flush=True)
        for mode in args.modes.split(","):
            rows = {}
            for tool in tools:
                done = subprocess.run(child_command(args, workdir, tool, mode, padding_free), capture_output=True,
                                      text=True)
                if done.returncode < 0:  # a signal: on a full machine, the kernel's out-of-memory killer
                    rows[tool] = {"error": f"killed by signal {-done.returncode} (out of memory, most likely)"}
                elif done.returncode != 0:
                    errors = [line for line in done.stderr.splitlines() if "Error" in line] or ["(no message)"]
                    rows[tool] = {"error": f"failed: {errors[-1].strip()}"}
                else:
                    rows[tool] = json.loads(done.stdout.splitlines()[-1])
                    timed = sum(lengths[args.batch : rows[tool]["steps"] * args.batch])  # steps 2.. hold these
                    rows[tool].update(tokens=timed, per_cpu_s=timed / rows[tool]["cpu_s"],
                                      per_wall_s=timed / rows[tool]["wall_s"])
                results.append({"mode": mode, "tool": tool, **rows[tool]})
                print_row(mode, tool, rows[tool])
            if "tuna" in rows:
                print_ratios(mode, rows)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
