"""CPU threads against training speed: the same short LoRA run of the embedded model at several thread counts.

    python benchmarks/threads.py                      # 1, 2 and 4 threads, plus tuna's own choice

Each count is one `tuna train` process (LoRA on examples/data/dates.jsonl, 5 steps of 8 examples, no
evaluation or checkpoints) with `train.cpu_threads` set; the last row leaves it unset, so tuna picks (the
CPUs the process may use, at most torch's default). Printed: tuna's real tokens per second over steps
2..5 (from metrics.jsonl), and the machine's usable CPUs. More threads than CPUs is what a container
limited to a few CPUs on a large host gets from torch's default.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "data" / "dates.jsonl"


def run(threads: int | None, workdir: Path, steps: int) -> float:
    out = workdir / f"run-{threads or 'auto'}"
    recipe = {"data": {"path": str(EXAMPLES), "eval_split": 0},
              "train": {"max_steps": steps, "micro_batch_size": 8, "save_every": 0, "cpu_threads": threads},
              "eval": {"every": 0}, "output_dir": str(out)}
    config = workdir / f"{out.name}.yaml"
    config.write_text(json.dumps(recipe))  # JSON is YAML
    subprocess.run([sys.executable, "-m", "tuna", "train", str(config), "--no-progress"], check=True,
                   capture_output=True, text=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r["train/tokens_per_s"] for r in records if "train/tokens_per_s" in r][1:]
    return sum(timed) / len(timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2,4")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    from tuna.train.cpu import usable_cpus

    print(f"usable CPUs: {usable_cpus()}; LoRA, embedded model, {args.steps} steps of 8 dates examples")
    with tempfile.TemporaryDirectory(prefix="tuna-threads-") as workdir:
        for threads in [int(t) for t in args.threads.split(",")] + [None]:
            rate = run(threads, Path(workdir), args.steps)
            print(f"{'tuna picks' if threads is None else f'{threads} threads':12} {rate:8.1f} real tokens/s", flush=True)


if __name__ == "__main__":
    main()
