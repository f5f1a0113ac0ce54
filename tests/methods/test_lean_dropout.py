"""LoRA's dropout folded into A: PEFT's values, gradients and random stream, without the copies."""
import copy

import torch

from tuna.methods.lean_dropout import DroppedInputLinear, fold_lora_dropout
from tuna.models.load import load_base


def lora_model(tiny_dirs, dropout: float, **extra):
    from peft import LoraConfig, get_peft_model

    model, _ = load_base(str(tiny_dirs["llama"]))
    torch.manual_seed(0)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear",
                                            init_lora_weights=False, **extra))


def step(model, ids, seed: int):
    model.zero_grad()
    torch.manual_seed(seed)
    logits = model(input_ids=ids).logits
    logits.pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads, torch.rand(3)  # the random stream after the step


def test_folded_dropout_gives_peft_values_gradients_and_random_stream(tiny_dirs):
    plain = lora_model(tiny_dirs, 0.3)
    folded = copy.deepcopy(plain)
    assert fold_lora_dropout(folded) == sum(1 for m in folded.modules() if isinstance(m, DroppedInputLinear)) > 0
    assert folded.state_dict().keys() == plain.state_dict().keys()
    ids = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    expected, got = step(plain, ids, seed=7), step(folded, ids, seed=7)
    torch.testing.assert_close(got[0], expected[0], atol=1e-6, rtol=1e-6)
    assert got[1].keys() == expected[1].keys()
    for name in expected[1]:
        torch.testing.assert_close(got[1][name], expected[1][name], atol=1e-6, rtol=1e-5, msg=name)
    assert torch.equal(got[2], expected[2])
    assert not torch.equal(step(folded, ids, seed=8)[0], got[0])  # dropout does drop: another seed, other values
    folded.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(folded(input_ids=ids).logits, plain(input_ids=ids).logits)


def saved_bytes(model, ids) -> int:
    storages = {}

    def keep(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(input_ids=ids).logits.sum()
    return sum(storages.values())


def test_folded_dropout_keeps_less_for_the_backward_pass(tiny_dirs):
    plain = lora_model(tiny_dirs, 0.1)
    folded = copy.deepcopy(plain)
    fold_lora_dropout(folded)
    no_dropout = lora_model(tiny_dirs, 0.0)
    ids = torch.randint(3, 100, (4, 64), generator=torch.Generator().manual_seed(1))
    kept = {name: saved_bytes(m, ids) for name, m in (("plain", plain), ("folded", folded), ("none", no_dropout))}
    # PEFT keeps 8 bytes per input element per adapted layer; folded, 1 byte per layer plus the shared input
    assert kept["folded"] < 0.8 * kept["plain"]
    assert kept["folded"] - kept["none"] < 0.5 * (kept["plain"] - kept["none"])


def test_dora_keeps_peft_dropout(tiny_dirs):
    model = lora_model(tiny_dirs, 0.1, use_dora=True)
    assert fold_lora_dropout(model) == 0
    assert not any(isinstance(m, DroppedInputLinear) for m in model.modules())
