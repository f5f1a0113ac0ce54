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
