"""Text in, text out (`models.generate` underneath): chat prompts go through the chat template, strings go in raw.

Greedy by default; `sample` draws with `temperature` and `top_p`, seeded by `seed`. `stop` strings end
an answer: a sequence stops generating once it has written one (transformers' `stop_strings`), and
the answer is cut where the first one begins, so the stop string itself is not part of it.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from tuna.data.render import chat_text
from tuna.models.generate import generate_ids


def generate(model, tokenizer, prompts: list[list[dict] | str], *, max_new_tokens: int = 64, batch_size: int = 16,
             sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, stop: list[str] | None = None,
             seed: int | None = None, progress: bool = False) -> list[str]:
    options = dict(stop_strings=list(stop), tokenizer=tokenizer) if stop else {}
    if seed is not None:
        torch.manual_seed(seed)
    outputs: list[str] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress, leave=False):
        chunk = prompts[start : start + batch_size]
        is_chat = isinstance(chunk[0], list)
        texts = [chat_text(tokenizer, p, generation_prompt=True) for p in chunk] if is_chat else chunk
        ids = [tokenizer(text, add_special_tokens=not is_chat).input_ids for text in texts]
        completions = generate_ids(model, ids, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                                   max_new_tokens=max_new_tokens, sample=sample, temperature=temperature,
                                   top_p=top_p, **options)
        outputs += [cut_at_stop(text, stop or []) for text in tokenizer.batch_decode(completions, skip_special_tokens=True)]
    return outputs


def cut_at_stop(text: str, stop: list[str]) -> str:
    """`text` up to where the earliest stop string begins."""
    found = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(found)] if found else text


def exact_match(prediction: str, reference: str) -> bool:
    """Equal after stripping surrounding whitespace: the format is part of what is scored."""
    return prediction.strip() == reference.strip()
