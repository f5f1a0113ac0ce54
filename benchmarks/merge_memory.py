"""Peak memory of `tuna merge`: three copies of the embedded SmolLM2-135M-Instruct merged into a uniform
soup, streamed tensor by tensor, against loading the three models whole and averaging them.

    python benchmarks/merge_memory.py

Each measurement runs in its own child process and reads that child's peak resident set size
(`ru_maxrss`, which includes the Python runtime, torch and transformers). `imports only` is a child that
imports the same modules and reads the configs and tokenizers without merging: the floor under both.
The three inputs are separate copies on disk (not one file three times), as three fine-tunes would be.
The merged soup of three identical models must equal the model; the benchmark checks that.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STREAMED = """
import sys
from tuna.merge.run import merge_models
inputs, out = sys.argv[1:4], sys.argv[4]
merge_models({"merge_method": "linear", "models": [{"model": m} for m in inputs]}, out, progress=False)
"""
WHOLE = """
import sys, torch
from transformers import AutoModelForCausalLM
inputs, out = sys.argv[1:4], sys.argv[4]
models = [AutoModelForCausalLM.from_pretrained(m) for m in inputs]
with torch.no_grad():
    for name, p in models[0].named_parameters():
        p.copy_(sum(dict(m.named_parameters())[name] for m in models) / len(models))
models[0].save_pretrained(out)
"""
IMPORTS = """
import sys
from tuna.merge.run import merge_models
from tuna.merge.sources import open_source, tokenizer_of
for m in sys.argv[1:4]:
    tokenizer_of(open_source(m)); open_source(m).config()
"""


PEAK = "\nimport resource\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"


def child_peak_mib(script: str, args: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of a fresh Python process running `script`; it prints its own peak last."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script + PEAK, *args], check=True, capture_output=True, text=True)
    return int(done.stdout.split()[-1]) / 1024, time.perf_counter() - started


def main() -> None:
    import torch
    from safetensors.torch import load_file

    from tuna.models.load import resolve

    source = Path(resolve("smollm2-135m"))
    weights = source / "model.safetensors"
    size_mib = weights.stat().st_size / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        copies = []
        for i in range(3):
            copies.append(str(Path(tmp) / f"copy{i}"))
            shutil.copytree(source, copies[-1])
        rows = []
        for label, script in [("imports only", IMPORTS), ("tuna merge (streamed)", STREAMED),
                              ("load 3 whole + average", WHOLE)]:
            out = Path(tmp) / label.split()[0]
            rows.append((label, *child_peak_mib(script, [*copies, str(out)])))
            if label.startswith("tuna"):
                merged, original = load_file(out / "model.safetensors"), load_file(weights)
                worst = max((merged[k] - original[k]).abs().max().item() for k in original)
                assert merged.keys() == original.keys() and worst < 1e-6, worst
    print(f"embedded model: {size_mib:.1f} MiB of float32 weights; 3 inputs; torch {torch.__version__}")
    print("| run | peak RSS (MiB) | × one model | seconds |")
    print("|---|---|---|---|")
    for label, peak, seconds in rows:
        print(f"| {label} | {peak:,.0f} | {peak / size_mib:.2f} | {seconds:.1f} |")
    floor = rows[0][1]
    print(f"streamed merge above the imports floor: {rows[1][1] - floor:,.0f} MiB "
          f"({(rows[1][1] - floor) / size_mib:.2f} × one model); soup of identical copies equals the model")


if __name__ == "__main__":
    main()
