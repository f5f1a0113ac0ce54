"""Prompt tuning and prefix tuning: trainable virtual tokens before every input; the model stays frozen.

"The Power of Scale for Parameter-Efficient Prompt Tuning" (Lester et al.): `prompt_tuning.virtual_tokens`
embeddings are prepended to the input embeddings and are the only parameters that train. They start
as the embeddings of randomly drawn vocabulary tokens (`init: sample_vocab`, the paper's better
initialisation) or at random. PEFT implements it; the saved adapter is a standard PEFT directory.
The model sees the virtual tokens as extra leading positions, so its logits hold them too;
`models.forward.model_logits` keeps the positions of the real input. Packed batches and
`train.loss_chunk_tokens` run the decoder without the virtual tokens and are refused.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from tuna.methods.base import Method
from tuna.sections import Section


class PromptTuningKnobs(Section):
    virtual_tokens: int = Field(20, ge=1, le=512, description="trainable embeddings put before every input")
    init: Literal["sample_vocab", "random"] = Field("sample_vocab", description="start from the embeddings of random "
                                                                                "vocabulary tokens, or at random")


class VirtualTokens(Method):
    """What prompt and prefix tuning share: PEFT's prompt learning over a frozen model. The virtual tokens
    are not part of the decoder's own forward pass, so packing and chunked losses are refused."""

    packs = False
    plain_forward = False
    saves_adapter = True

    def peft_config(self):
        raise NotImplementedError

    def prepare(self, model, calibration=None):
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config())

    def adapter_off_is_base(self) -> bool:
        return True


class PromptTuning(VirtualTokens):
    name = "prompt_tuning"
    summary = "train a few virtual-token embeddings put before every input (PEFT); the model stays frozen"
    paper = "The Power of Scale for Parameter-Efficient Prompt Tuning"
    default_lr = 3e-2
    sections = {"prompt_tuning": PromptTuningKnobs}

    def peft_config(self):
        from peft import PromptTuningConfig, PromptTuningInit

        init = PromptTuningInit.SAMPLE_VOCAB if self.prompt_tuning.init == "sample_vocab" else PromptTuningInit.RANDOM
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=self.prompt_tuning.virtual_tokens,
                                  prompt_tuning_init=init)


class PrefixKnobs(Section):
    virtual_tokens: int = Field(20, ge=1, le=512, description="trainable key/value positions put before every input, "
                                                              "in every layer")


class Prefix(VirtualTokens):
    """P-tuning v2 / prefix tuning ("Prefix-Tuning: Optimizing Continuous Prompts for Generation"; "P-Tuning v2"):
    trainable keys and values for `prefix.virtual_tokens` positions in every layer's attention, without
    the reparameterisation MLP (P-tuning v2's choice). PEFT implements it. transformers 5's `generate`
    drops PEFT's prefix, so tuna generates from prefix-tuned models step by step (`models.generate`)."""

    name = "prefix"
    summary = "P-tuning v2: trainable key/value prefixes in every layer (PEFT prefix tuning); the model stays frozen"
    paper = "P-Tuning v2: Prompt Tuning Can Be Comparable to Fine-tuning Universally Across Scales and Tasks"
    default_lr = 1e-2
    sections = {"prefix": PrefixKnobs}

    def peft_config(self):
        from peft import PrefixTuningConfig

        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=self.prefix.virtual_tokens,
                                  prefix_projection=False)
