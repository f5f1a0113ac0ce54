"""Vocabularies: inputs whose token tables differ are refused, unless `tokenizer_source` names whose
vocabulary the output keeps. Then each input's embedding and head rows are re-ordered by token text
into that vocabulary; a token an input lacks takes the row of the model that defines it (the
`tokenizer_source` model), so its task vector there is zero. Nothing is truncated."""
from __future__ import annotations

import torch

from tuna.errors import UserError


def is_vocab_tensor(name: str) -> bool:
    return "embed_tokens" in name or name.startswith("lm_head") or name.endswith("lm_head.weight")


def row_index(out_vocab: dict[str, int], vocab: dict[str, int], out_rows: int, rows: int) -> torch.Tensor:
    """For each output row, the input's row holding the same token (−1 where the input lacks it). Rows past
    the tokenizer (padding rows) match by position."""
    index = torch.full((out_rows,), -1, dtype=torch.long)
    named = set()
    for token, i in out_vocab.items():
        if i < out_rows:
            named.add(i)
            j = vocab.get(token)
            if j is not None and j < rows:
                index[i] = j
    for i in set(range(min(out_rows, rows))) - named:
        index[i] = i
    return index


def aligned(tensor: torch.Tensor, index: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """`tensor`'s rows re-ordered by `index`; rows it lacks are `fill`'s."""
    out = fill.clone()
    have = index >= 0
    out[have] = tensor[index[have]].to(out.dtype)
    return out


def refuse_mismatch(name: str, specs: list[str], shapes: list[tuple]) -> None:
    """One line naming the tensor and the two shapes that differ."""
    first = shapes[0]
    other = next(i for i, s in enumerate(shapes) if s != first)
    hint = ("; the vocabularies differ: set tokenizer_source (`base` or one input) to merge into one of them"
            if is_vocab_tensor(name) else "")
    raise UserError(f"shape mismatch in {name}: {list(first)} in {specs[0]} but {list(shapes[other])} in "
                    f"{specs[other]}{hint}")
