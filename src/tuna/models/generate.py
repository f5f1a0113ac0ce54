"""Batched generation from token ids with the KV cache: the one generator behind `tuna generate` and
`tuna eval`, GRPO's sampling, and the greedy answers that S3FT judges and GRPO's held-out reward scores.

Prompts are left-padded so every row continues from the right edge; each completion is cut after its
first EOS. Greedy by default; `sample` draws with `temperature` and `top_p`, `group` completions per
prompt (prompt-major). Other keyword arguments go to transformers' `generate` (e.g. `stop_strings`).
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from tuna.models.forward import evaluating


def generate_ids(model, prompt_ids: list[list[int]], *, pad_id: int, eos_id: int, max_new_tokens: int,
                 sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, group: int = 1,
                 **options) -> list[list[int]]:
    if prefix_tuned(model):
        return [stepwise(model, ids, eos_id=eos_id, max_new_tokens=max_new_tokens, sample=sample,
                         temperature=temperature, top_p=top_p) for ids in prompt_ids for _ in range(group)]
    device = next(model.parameters()).device
    width = max(map(len, prompt_ids))
    input_ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention[row, width - len(ids):] = 1
    if sample:
        options.update(do_sample=True, temperature=temperature, top_p=top_p, num_return_sequences=group)
    else:
        options.update(do_sample=False)
    with evaluating(model):
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                             max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_id, **options)
    return [row[: row.index(eos_id) + 1] if eos_id in row else row for row in out[:, width:].tolist()]


def greedy_batches(model, tokenizer, prompt_ids: list[list[int]], *, max_new_tokens: int, batch_size: int,
                   progress: bool = False, desc: str = "greedy answers"):
    """Yield (start, the decoded greedy answers to prompts start, start+1, ...) for each batch, in order,
    so a caller can score a batch before the next is generated."""
    for start in tqdm(range(0, len(prompt_ids), batch_size), desc=desc, disable=not progress, leave=False):
        completions = generate_ids(model, prompt_ids[start : start + batch_size], pad_id=tokenizer.pad_token_id,
                                   eos_id=tokenizer.eos_token_id, max_new_tokens=max_new_tokens)
        yield start, tokenizer.batch_decode(completions, skip_special_tokens=True)


def prefix_tuned(model) -> bool:
    """PEFT prefix tuning, whose prefix transformers 5's `generate` drops (it passes the prefix as the deprecated
    `past_key_values` beside its own cache): such a model generates step by step instead."""
    config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", None))
    return str(getattr(config, "peft_type", "")).endswith("PREFIX_TUNING")


@torch.no_grad()
def stepwise(model, prompt: list[int], *, eos_id: int, max_new_tokens: int, sample: bool, temperature: float,
             top_p: float) -> list[int]:
    """One prompt's completion by full forward passes, one token at a time (no cache, no padding, so the
    positions are those of training): slow, exact."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    completion: list[int] = []
    with evaluating(model):
        for _ in range(max_new_tokens):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[0, -1].float()
            token = int(nucleus_sample(logits / temperature, top_p)) if sample else int(logits.argmax())
            completion.append(token)
            if token == eos_id:
                break
            ids = torch.cat([ids, torch.tensor([[token]], device=device)], dim=1)
    return completion


def nucleus_sample(logits: torch.Tensor, top_p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A token from the smallest set of most likely tokens whose probability reaches `top_p`."""
    probs = torch.softmax(logits, dim=-1)
    ordered, order = probs.sort(descending=True)
    keep = ordered.cumsum(0) - ordered < top_p  # always keeps the most likely token
    ordered = ordered * keep
    return order[torch.multinomial(ordered / ordered.sum(), 1, generator=generator)[0]]
