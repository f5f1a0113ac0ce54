"""Records as the scorer sees them, and what a model makes of them.

A record is rendered exactly as SFT trains on it (chat template, answer tokens and end of turn
labelled); a preference pair is rendered with its chosen answer. Its answer alone is the labelled
tokens by themselves, every one labelled, as Cherry LLM scores "the answer alone". All scoring is
batched, sorted by length, with a progress bar.
"""
from __future__ import annotations

import copy

import torch
from tqdm.auto import tqdm

from tuna.data.batch import collate
from tuna.data.formats import answered_example, canonical, detect_format
from tuna.data.read import Records, naming_sources
from tuna.data.render import Rendered, render_example
from tuna.data.scoring import labelled_logprobs
from tuna.errors import UserError
from tuna.models.forward import IGNORE, MODEL_INPUTS, evaluating, token_losses


def rendered(records: Records, tokenizer, max_tokens: int) -> list[Rendered]:
    """Each record as training renders it (cut at `max_tokens`); a record with no answer token is refused."""
    records = Records([canonical(r, origin) for r, origin in zip(records, records.origins)], records.origins)
    fmt = detect_format(records)
    out = []
    with naming_sources(records):
        for index, record in enumerate(records):
            example = answered_example(record, fmt, index)
            item = render_example(example, tokenizer)
            item = Rendered(item.input_ids[:max_tokens], item.labels[:max_tokens])
            if item.target_count == 0:
                raise UserError(f"record {index + 1}: no answer token to score (within {max_tokens} tokens)")
            out.append(item)
    return out


def answer_alone(item: Rendered) -> Rendered:
    """The labelled tokens by themselves, all labelled (the first has no context, so it is not predicted)."""
    answer = [label for label in item.labels if label != IGNORE]
    return Rendered(answer, list(answer))


def has_question(item: Rendered) -> bool:
    return item.labels[0] == IGNORE


def mean_losses(model, items: list[Rendered], *, pad_id: int, batch_size: int, progress: bool,
                desc: str) -> list[float]:
    """Each item's mean loss over its labelled (predicted) tokens."""
    return [-total / max(count, 1) for total, count in
            labelled_logprobs(model, items, batch_size=batch_size, pad_id=pad_id, progress=progress, desc=desc)]


def embeddings(model, items: list[Rendered], *, pad_id: int, batch_size: int, progress: bool) -> torch.Tensor:
    """(N, hidden) mean over each sequence's tokens of the last hidden state."""
    device = next(model.parameters()).device
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    out: list = [None] * len(items)
    with evaluating(model):
        for start in tqdm(range(0, len(order), batch_size), desc="select: embed", disable=not progress, leave=False):
            chunk = order[start:start + batch_size]
            batch = {k: v.to(device) for k, v in collate([items[i] for i in chunk], pad_id).items()}
            hidden = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}, output_hidden_states=True,
                           use_cache=False).hidden_states[-1]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            for i, row in zip(chunk, pooled.float().cpu()):
                out[i] = row
    return torch.stack(out)


def short_fine_tune(model, items: list[Rendered], *, pad_id: int, steps: int, batch_size: int, lr: float,
                    seed: int, progress: bool):
    """A copy of `model` trained for `steps` AdamW steps on `items` (LoBaSS' reference fine-tune), in
    seeded random batches; the original is untouched."""
    tuned = copy.deepcopy(model)
    tuned.train()
    optimizer = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    device = next(tuned.parameters()).device
    for _ in tqdm(range(steps), desc="select: lobass fine-tune", disable=not progress, leave=False):
        pick = torch.randint(len(items), (min(batch_size, len(items)),), generator=generator).tolist()
        batch = {k: v.to(device) for k, v in collate([items[i] for i in pick], pad_id).items()}
        losses, mask = token_losses(tuned, batch)
        loss = losses.sum() / mask.sum().clamp(min=1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tuned.eval()
    return tuned
