"""Batched generation with the KV cache: chat prompts go through the chat template, strings go in raw."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from tuna.data.render import chat_text


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[dict] | str], *, max_new_tokens: int = 64, batch_size: int = 16,
             sample: bool = False, temperature: float = 1.0, progress: bool = False) -> list[str]:
    device = next(model.parameters()).device
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress, leave=False):
            chunk = prompts[start : start + batch_size]
            is_chat = isinstance(chunk[0], list)
            texts = [chat_text(tokenizer, p, generation_prompt=True) for p in chunk] if is_chat else chunk
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not is_chat).to(device)
            options = dict(do_sample=True, temperature=temperature) if sample else dict(do_sample=False)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **options)
            outputs += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs


def exact_match(prediction: str, reference: str) -> bool:
    """Equal after stripping surrounding whitespace: the format is part of what is scored."""
    return prediction.strip() == reference.strip()
