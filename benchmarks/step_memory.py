"""Where one LoRA step's memory goes, on the embedded model: what the backward pass keeps, and the RSS.

    python benchmarks/step_memory.py                 # 6 generated conversations (about 5,500 tokens), 4 setups

One step (forward and backward) of LoRA r16 (dropout 0.05, all linear layers) on SmolLM2-135M-Instruct,
the examples packed into one row as tuna's default batching does, fp32 on the CPU. Four setups, each in
its own process:
- `peft`: PEFT's LoRA modules and the plain loss (all logits, log-softmax kept for the backward pass);
- `+ frozen head`: tuna's frozen-head cross-entropy (`objectives.chunked_ce`), no logits kept;
- `+ folded dropout`: and LoRA's dropout folded into A (`methods.lean_dropout`): tuna's defaults;
- `+ release memory`: and `train.release_memory` (glibc hands freed tensors back to the OS).
The tensors kept for the backward pass are counted once per storage (saved-tensor hooks), grouped by
what made them; the peak RSS is the whole process's (`ru_maxrss`), model and libraries included.
"""
from __future__ import annotations

import argparse
import collections
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

SETUPS = ("peft", "+ frozen head", "+ folded dropout", "+ release memory")


def group(module_name: str, last_dim: int, dtype) -> str:
    """A readable name for what a kept tensor is."""
    leaf = module_name.rsplit(".", 1)[-1]
    if leaf == "default":
        return "LoRA dropout and A inputs" + (" (masks)" if str(dtype) == "torch.bool" else "")
    if leaf in ("", "top", "lm_head") and last_dim > 10_000:
        return "logits and their softmax"
    return {"mlp": "MLP (gate, up)", "act_fn": "MLP (activation)", "self_attn": "attention (q, k, v, out)",
            "input_layernorm": "norms", "post_attention_layernorm": "norms", "norm": "norms"}.get(leaf, "other")


def measure(setup: int, rows_file: Path) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from tuna.data.batch import target_weights
    from tuna.data.packing import collate_packed
    from tuna.data.render import Rendered
    from tuna.methods.lean_dropout import fold_lora_dropout
    from tuna.models.attention import use_packed_attention
    from tuna.models.forward import token_losses
    from tuna.models.load import load_base
    from tuna.objectives.chunked_ce import frozen_head_token_losses
    from tuna.train.cpu import release_freed_memory

    if setup >= 3:
        release_freed_memory()
    items = [Rendered(ids, labels) for ids, labels in json.loads(rows_file.read_text())]
    batch = collate_packed(items, [target_weights(item) for item in items])
    model, _ = load_base("smollm2-135m")
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"))
    if setup >= 2:
        fold_lora_dropout(model)
    use_packed_attention(model)
    model.train()
    stack = [""]
    for name, module in model.named_modules():
        module.register_forward_pre_hook(lambda m, a, name=name: stack.append(name))  # append returns None
        module.register_forward_hook(lambda m, a, out: (stack.pop(), None)[1])
    kept, sizes = set(), collections.Counter()

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in kept:
            kept.add(storage.data_ptr())
            sizes[group(stack[-1], t.shape[-1] if t.dim() else 0, t.dtype)] += storage.nbytes()
        return t

    losses_of = frozen_head_token_losses if setup >= 1 else token_losses
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        losses, _ = losses_of(model, batch)
        loss = (losses * batch["weights"][:, 1:]).sum() / batch["weights"].sum()
    loss.backward()
    return {"tokens": batch["input_ids"].shape[1], "kept": dict(sizes),
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=6, help="generated conversations in the row (at 8, the "
                        "first setup needs more than a 24 GB machine)")
    parser.add_argument("--setup", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setup is not None:
        print(json.dumps(measure(args.setup, Path(args.rows))))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from peers import make_records

    from tuna.data.render import render_records
    from tuna.models.load import load_tokenizer, resolve

    tokenizer = load_tokenizer(resolve("smollm2-135m"))
    records = make_records(args.examples, seed=1, tokenizer=tokenizer)
    rendered, _ = render_records(records, "messages", tokenizer, train_on="completion", max_tokens=2048,
                                 overflow="truncate")
    results = []
    with tempfile.TemporaryDirectory(prefix="tuna-step-memory-") as workdir:
        rows = Path(workdir) / "rows.json"
        rows.write_text(json.dumps([[r.input_ids, r.labels] for r in rendered]))
        for setup in range(len(SETUPS)):
            done = subprocess.run([sys.executable, __file__, "--setup", str(setup), "--rows", str(rows)],
                                  capture_output=True, text=True, check=True)
            results.append(json.loads(done.stdout.splitlines()[-1]))
    tokens = results[0]["tokens"]
    groups = sorted({g for r in results for g in r["kept"]}, key=lambda g: -results[0]["kept"].get(g, 0))
    print(f"one LoRA step, SmolLM2-135M-Instruct, {tokens:,} tokens in one packed row; MiB kept for the backward pass")
    print(f"{'':28}" + "".join(f"{s:>18}" for s in SETUPS))
    for g in groups:
        print(f"{g:28}" + "".join(f"{r['kept'].get(g, 0) / 2**20:>18,.0f}" for r in results))
    print(f"{'all kept':28}" + "".join(f"{sum(r['kept'].values()) / 2**20:>18,.0f}" for r in results))
    print(f"{'peak RSS':28}" + "".join(f"{r['peak_mib']:>18,.0f}" for r in results))
    print(f"{'loss':28}" + "".join(f"{r['loss']:>18.6f}" for r in results))


if __name__ == "__main__":
    main()
