"""The forgetting probe: general abilities a task fine-tune should leave alone, measured offline.

Two parts, both shipped with tuna, so the probe needs no download:
- `general_ppl`: perplexity on the Python standard library's docstrings (`data.general_text`),
  ordinary English technical prose that no demo task trains on;
- `general_mc`: accuracy on tuna's own 48 general-knowledge multiple-choice questions
  (`eval.general_questions`), each choice scored by its summed log-likelihood as the answer.
Forgetting is the change from the base model: perplexity up (in %) and accuracy down (in points).
"""
from __future__ import annotations

from tuna.data.general_text import stdlib_docstrings
from tuna.data.render import render_records
from tuna.eval.task import multiple_choice_accuracy
from tuna.eval.general_questions import general_question_records
from tuna.data.scoring import heldout_loss


def general_suite(model, tokenizer, *, batch_size: int = 8, max_tokens: int = 256) -> dict[str, float]:
    """{general_ppl, general_mc} of one model."""
    texts = [{"text": t} for t in stdlib_docstrings()]
    items, _ = render_records(texts, "text", tokenizer, train_on="all", max_tokens=max_tokens, overflow="truncate")
    device = next(model.parameters()).device
    ppl = heldout_loss(model, items, batch_size=batch_size, pad_id=tokenizer.pad_token_id, device=device)["ppl"]
    mc = multiple_choice_accuracy(model, tokenizer, general_question_records(), batch_size=batch_size)
    return {"general_ppl": ppl, "general_mc": mc["acc"]}


def forgetting(base: dict[str, float], tuned: dict[str, float]) -> dict[str, float]:
    """How far the tuned model moved from its base: perplexity change in %, accuracy change in points."""
    return {"general_ppl_change_pct": 100 * (tuned["general_ppl"] / base["general_ppl"] - 1),
            "general_mc_change_pts": 100 * (tuned["general_mc"] - base["general_mc"])}
