"""Proxy-tuning ("Tuning Language Models by Proxy"): steer a large model at decoding time with the difference
between a small tuned expert and its untuned version, without touching the large model's weights.

At every position the next-token logits are  s_large + (s_expert − s_anti),  then softmax as usual:
the expert's learned shift, measured against its own base (the anti-expert), moves the large model.
The three models must share one vocabulary. `ProxyTuned` looks like a causal LM to the rest of tuna:
its forward returns the combined logits (so loss, perplexity and multiple-choice scoring use them),
and its `generate` runs the large model's own generation with a logits processor that adds the
expert-minus-anti logits, each small model keeping its own KV cache across the steps.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from tuna.errors import UserError


class ProxyTuned(nn.Module):
    def __init__(self, large, expert, anti):
        super().__init__()
        sizes = {name: m.get_output_embeddings().weight.shape[0] for name, m in
                 (("model", large), ("proxy", expert), ("anti", anti))}
        if len(set(sizes.values())) != 1:
            raise UserError(f"proxy-tuning needs one vocabulary for all three models; their output sizes differ "
                            f"({', '.join(f'{k} {v}' for k, v in sizes.items())})")
        self.large, self.expert, self.anti = large, expert, anti
        self.config = large.config

    def forward(self, input_ids, attention_mask=None, use_cache=False, **kwargs):
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        logits = self.large(**inputs).logits + self.expert(**inputs).logits - self.anti(**inputs).logits
        return SimpleNamespace(logits=logits)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, logits_processor=None, **kwargs):
        from transformers import LogitsProcessorList

        steer = ExpertShift(self.expert, self.anti, input_ids.shape[1],
                            attention_mask if attention_mask is not None else torch.ones_like(input_ids))
        processors = LogitsProcessorList([steer, *(logits_processor or [])])
        return self.large.generate(input_ids=input_ids, attention_mask=attention_mask, logits_processor=processors,
                                   **kwargs)


class ExpertShift:
    """A logits processor adding s_expert − s_anti for the sequences generated so far (rows may be repeated
    `num_return_sequences` times; the prompt's padding mask follows them)."""

    def __init__(self, expert, anti, prompt_length: int, prompt_mask: torch.Tensor):
        self.models = (expert, anti)
        self.prompt_length, self.prompt_mask = prompt_length, prompt_mask
        self.caches: list = [None, None]
        self.seen = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        repeats = input_ids.shape[0] // self.prompt_mask.shape[0]
        prompt_mask = self.prompt_mask.repeat_interleave(repeats, dim=0).to(input_ids.device)
        generated = input_ids.shape[1] - self.prompt_length
        mask = torch.cat([prompt_mask, torch.ones(input_ids.shape[0], generated, dtype=prompt_mask.dtype,
                                                  device=input_ids.device)], dim=1)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        new = slice(self.seen, input_ids.shape[1])
        logits = []
        for k, model in enumerate(self.models):
            out = model(input_ids=input_ids[:, new], attention_mask=mask, position_ids=positions[:, new],
                        past_key_values=self.caches[k], use_cache=True)
            self.caches[k] = out.past_key_values
            logits.append(out.logits[:, -1].float())
        self.seen = input_ids.shape[1]
        return scores + (logits[0] - logits[1]).to(scores.dtype)


def check_same_tokenizer(*tokenizers) -> None:
    vocabularies = [t.get_vocab() for t in tokenizers]
    if any(v != vocabularies[0] for v in vocabularies[1:]):
        raise UserError("proxy-tuning needs one tokenizer for the model, --proxy and --anti; their vocabularies differ")
