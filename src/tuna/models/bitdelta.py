"""BitDelta ("BitDelta: Your Fine-Tune May Only Be Worth One Bit"): a fine-tune's weight delta as one sign
bit per weight plus one scale per matrix.

For each linear weight of the decoder blocks, Δ = W_fine − W_base is stored as sign(Δ) (packed, 8 signs
a byte) and a scale α, initialised to mean|Δ| (the α that minimises ‖Δ − α·sign(Δ)‖₂); the scales are
then distilled (`export.bitdelta`). Everything else the fine-tune changed (embeddings, norms, head) is
small and is kept exactly, in float32. A BitDelta directory holds `bitdelta.safetensors`, the base
model it applies to (`bitdelta.json`) and the tokenizer; `models.load.load_any` loads it as
base + α·sign(Δ).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tuna.errors import UserError
from tuna.models.layers import decoder_layers

FILE = "bitdelta.safetensors"
META = "bitdelta.json"
FORMAT = "tuna-bitdelta"


def compressible(model) -> list[str]:
    """The parameter names of the decoder blocks' linear weights: what BitDelta stores as signs."""
    blocks = {id(m) for m in decoder_layers(model).modules()}
    return [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and id(m) in blocks]


@torch.no_grad()
def compress(base, tuned) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(signs ±1 as int8, initial scales mean|Δ|, the other changed tensors' exact deltas), by parameter name."""
    base_params, tuned_params = dict(base.named_parameters()), dict(tuned.named_parameters())
    if set(base_params) != set(tuned_params):
        raise UserError("the fine-tune and its base have different parameters; BitDelta needs the same architecture")
    signs, scales, exact = {}, {}, {}
    matrices = set(compressible(tuned))
    for name, weight in tuned_params.items():
        delta = weight.float() - base_params[name].float()
        if name in matrices:
            signs[name] = torch.where(delta >= 0, 1, -1).to(torch.int8)
            scales[name] = delta.abs().mean()
        elif delta.abs().max() > 0:
            exact[name] = delta
    return signs, scales, exact


@torch.no_grad()
def apply(model, signs: dict[str, torch.Tensor], scales: dict[str, torch.Tensor], exact: dict[str, torch.Tensor]) -> None:
    """Add α·sign(Δ) and the exact deltas to `model`'s weights (its base), in place."""
    params = dict(model.named_parameters())
    for name, sign in signs.items():
        params[name].add_((scales[name] * sign.float()).to(params[name].dtype))
    for name, delta in exact.items():
        params[name].add_(delta.to(params[name].dtype))


def distil(base, tuned, signs, scales, exact, batches: list[dict], *, steps: int, lr: float,
           progress: bool = False) -> tuple[dict[str, torch.Tensor], float, float]:
    """The scales trained (signs fixed, Adam) so that base + α·sign(Δ) gives the fine-tune's logits: the mean
    squared logit error over real tokens. Returns (scales, error before, error after)."""
    from torch.func import functional_call
    from tqdm.auto import tqdm

    from tuna.models.forward import MODEL_INPUTS

    inputs = [{k: b[k] for k in MODEL_INPUTS if k in b} for b in batches]
    tuned.eval()
    base.eval().requires_grad_(False)
    with torch.no_grad():
        targets = [tuned(**x).logits for x in inputs]
    base_params = dict(base.named_parameters())
    alphas = {name: torch.nn.Parameter(scale.clone()) for name, scale in scales.items()}

    def error(x: dict, target: torch.Tensor) -> torch.Tensor:
        weights = {name: base_params[name] + alphas[name] * signs[name] for name in signs}
        weights.update({name: base_params[name] + delta for name, delta in exact.items()})
        logits = functional_call(base, weights, kwargs=x).logits
        return ((logits - target) ** 2)[x["attention_mask"].bool()].mean()

    def mean_error() -> float:
        with torch.no_grad():
            return sum(float(error(x, t)) for x, t in zip(inputs, targets)) / len(inputs)

    before = mean_error()
    optimizer = torch.optim.Adam(list(alphas.values()), lr=lr)
    for step in tqdm(range(steps), desc="bitdelta: distil scales", disable=not progress, leave=False):
        optimizer.zero_grad()
        error(inputs[step % len(inputs)], targets[step % len(targets)]).backward()
        optimizer.step()
    return {name: a.detach() for name, a in alphas.items()}, before, mean_error()


def save(out: Path, base_spec: str, signs, scales, exact) -> None:
    tensors = {}
    shapes = {}
    for name, sign in signs.items():
        packed = np.packbits((sign.reshape(-1) > 0).numpy())
        tensors[f"{name}.signs"] = torch.from_numpy(packed)
        tensors[f"{name}.scale"] = scales[name].detach().float().reshape(1)
        shapes[name] = list(sign.shape)
    for name, delta in exact.items():
        tensors[f"{name}.delta"] = delta.detach().float().contiguous()
    save_file(tensors, out / FILE, metadata={"format": FORMAT, "shapes": json.dumps(shapes)})
    (out / META).write_text(json.dumps({"base_model": base_spec, "format": FORMAT}, indent=1))


def load(path: Path) -> tuple[str, dict, dict, dict]:
    """(base model spec, signs, scales, exact deltas) of a BitDelta directory."""
    try:
        base = json.loads((path / META).read_text())["base_model"]
        with safe_open(str(path / FILE), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            shapes = json.loads(meta["shapes"])
            signs, scales, exact = {}, {}, {}
            for name, shape in shapes.items():
                bits = np.unpackbits(f.get_tensor(f"{name}.signs").numpy())[: int(np.prod(shape))]
                signs[name] = torch.from_numpy(bits.astype(np.int8) * 2 - 1).view(shape)
                scales[name] = f.get_tensor(f"{name}.scale")[0]
            for key in f.keys():
                if key.endswith(".delta"):
                    exact[key.removesuffix(".delta")] = f.get_tensor(key)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path} is not a readable BitDelta directory ({exc})") from None
    return base, signs, scales, exact


def is_bitdelta(path: Path) -> bool:
    return (path / FILE).is_file() and (path / META).is_file()
