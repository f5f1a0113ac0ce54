"""NEFTune: noisy embeddings during training ("NEFTune: Noisy Embeddings Improve Instruction Finetuning").

While the model trains, uniform noise in [-1, 1] scaled by alpha/sqrt(L·d) is added to the input
embeddings, where L is the (padded) sequence length and d the embedding width, as in the paper's
Algorithm 1 and TRL. Evaluation and generation (model.eval()) see clean embeddings.
"""
from __future__ import annotations

import math

import torch


def add_neftune(model, alpha: float) -> torch.utils.hooks.RemovableHandle:
    def noisy(module, inputs, output):
        if not module.training:
            return output
        scale = alpha / math.sqrt(output.size(-2) * output.size(-1))
        return output + torch.empty_like(output).uniform_(-scale, scale)

    return model.get_input_embeddings().register_forward_hook(noisy)
