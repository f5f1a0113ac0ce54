"""Padded vs sorted vs packed batching: real tokens/s, peak memory and padding, in one run.

    python benchmarks/batching.py                       # CPU, tiny model (a few minutes on 2 cores)
    python benchmarks/batching.py --shape llama-1b      # GPU: Llama-3.2-1B shapes, random weights

Two length distributions, as in real SFT data:
  (a) uniform  : lengths uniform in 64..2048;
  (b) longtail : log-normal, median 200, sigma 1.0, capped at 4096 (instruction data looks like this).
Each mode trains the same randomly initialised model (full fine-tuning, AdamW, constant lr) for one
epoch over the same examples, so every mode sees the same token budget. `padded` and `sorted` take
8 examples a step; `packed` takes as many rows of max_tokens as hold about the same number of tokens.
Tokens follow a fixed random Markov chain over 64 of the vocabulary's tokens (4 successors each), so
the loss can fall from ln V to about ln 4; the held-out loss after the epoch shows whether a mode
changed what is learnt.
Each (distribution, mode) runs in its own process, so the peak memory figures do not mix.

The measured path is tuna's own: `TrainBatches` (plans and collation), `use_packed_attention`, and the
SFT loss with its step weighting, in a minimal loop without logging or checkpoints.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import torch

SHAPES = {
    "tiny": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
}
DISTRIBUTIONS = {"uniform": 2048, "longtail": 4096}  # name -> max_tokens (the longest example)
EXAMPLES_PER_STEP = 8
STATES = 64  # the Markov chain's tokens
MODES = ("padded", "sorted", "packed")


def lengths_of(distribution: str, n: int, generator: torch.Generator) -> list[int]:
    if distribution == "uniform":
        return torch.randint(64, 2049, (n,), generator=generator).tolist()
    normal = torch.randn(n, generator=generator)
    return [min(4096, max(8, round(200 * math.exp(x)))) for x in normal.tolist()]


def make_items(distribution: str, n: int, seed: int):
    """Markov-chain token sequences; the first 30% of each is prompt (no loss)."""
    from tuna.data.render import IGNORE, Rendered

    generator = torch.Generator().manual_seed(seed)
    successors = torch.randint(0, STATES, (STATES, 4), generator=generator)
    items = []
    for length in lengths_of(distribution, n, generator):
        choice = torch.randint(0, 4, (length,), generator=generator).tolist()
        ids = [int(torch.randint(0, STATES, (1,), generator=generator))]
        for c in choice[1:]:
            ids.append(int(successors[ids[-1], c]))
        prompt = int(0.3 * length)
        items.append(Rendered(ids, [IGNORE] * prompt + ids[prompt:]))
    return items


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(args) -> dict:
    """One (distribution, mode): train an epoch, return what was measured."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tuna.data.batch import TrainBatches, eval_batches, real_tokens
    from tuna.eval.perplexity import heldout_loss
    from tuna.models.attention import use_packed_attention
    from tuna.objectives.sft import batch_weight, loss

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = SHAPES[args.shape]
    max_tokens = DISTRIBUTIONS[args.distribution]
    items = make_items(args.distribution, args.examples, seed=1)
    held_out = make_items(args.distribution, 16, seed=2)
    torch.manual_seed(0)
    config = LlamaConfig(**shape, max_position_embeddings=max_tokens, use_cache=False)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device)
    if args.mode == "packed":
        use_packed_attention(model)
    mean = sum(len(i.input_ids) for i in items) / len(items)
    per_step = max(1, round(EXAMPLES_PER_STEP * mean / max_tokens)) if args.mode == "packed" else EXAMPLES_PER_STEP
    batches = TrainBatches(items, batching=args.mode, batch_size=per_step, max_tokens=max_tokens,
                           weighting="token", pad_id=0, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    computed_tokens, timed_tokens, seconds, losses = 0, 0, 0.0, []
    for step in range(batches.batches_per_epoch):
        batch = {k: v.to(device) for k, v in batches.next().items()}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        value, _ = loss(model, batch, batch_weight(batch))
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(value))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        computed_tokens += batch["input_ids"].numel()
        if step > 0:  # the first step pays for warm-up
            seconds += time.perf_counter() - t0
            timed_tokens += real_tokens(batch)
    final = heldout_loss(model, held_out, batch_size=4, pad_id=0, device=device)["loss"]
    real = sum(len(i.input_ids) for i in items)
    return {"distribution": args.distribution, "mode": args.mode, "steps": batches.batches_per_epoch,
            "units_per_step": per_step, "real_tokens": real, "tokens_per_s": timed_tokens / seconds,
            "padding": 1 - real / computed_tokens, "peak_mib": peak_memory_mib(device),
            "train_loss_last": sum(losses[-3:]) / len(losses[-3:]), "heldout_loss": final}


def padding_bound(items) -> float:
    """Padded compute over real tokens for padded batches of 8: the most packing can gain from padding alone."""
    lengths = [len(i.input_ids) for i in items]
    groups = [lengths[s : s + EXAMPLES_PER_STEP] for s in range(0, len(lengths), EXAMPLES_PER_STEP)]
    return sum(len(g) * max(g) for g in groups) / sum(lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--examples", type=int, default=96, help="training examples per distribution")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--distributions", default="uniform,longtail")
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--distribution", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:  # a child process: one measurement, as one JSON line
        print(json.dumps(run_one(args)))
        return

    print(f"batching benchmark: shape {args.shape}, device {args.device}, {args.examples} examples per "
          f"distribution; torch {torch.__version__}", flush=True)
    results = []
    for distribution in args.distributions.split(","):
        items = make_items(distribution, args.examples, seed=1)
        print(f"\n({distribution}) mean length {sum(len(i.input_ids) for i in items) / len(items):.0f}, "
              f"padding bound for batches of {EXAMPLES_PER_STEP}: {padding_bound(items):.2f}x", flush=True)
        print(f"{'mode':8} {'steps':>5} {'per step':>9} {'real tok/s':>11} {'padding':>8} {'peak MiB':>9} "
              f"{'held-out loss':>14} {'vs padded':>10}")
        base = None
        for mode in MODES:
            command = [sys.executable, __file__, "--shape", args.shape, "--device", args.device, "--examples",
                       str(args.examples), "--lr", str(args.lr), "--distribution", distribution, "--mode", mode]
            row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            base = base or row["tokens_per_s"]
            unit = "rows" if mode == "packed" else "examples"
            print(f"{mode:8} {row['steps']:>5} {row['units_per_step']:>3} {unit:>5} {row['tokens_per_s']:>11,.0f} "
                  f"{row['padding']:>8.1%} {row['peak_mib']:>9,.0f} {row['heldout_loss']:>14.4f} "
                  f"{row['tokens_per_s'] / base:>9.2f}x", flush=True)
            results.append(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
