"""Prompt tuning: a few trainable virtual-token embeddings put before every input; the model stays frozen.

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


class PromptTuning(Method):
    name = "prompt_tuning"
    summary = "train a few virtual-token embeddings put before every input (PEFT); the model stays frozen"
    paper = "The Power of Scale for Parameter-Efficient Prompt Tuning"
    default_lr = 3e-2
    sections = {"prompt_tuning": PromptTuningKnobs}
    packs = False
    plain_forward = False

    def prepare(self, model, calibration=None):
        from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

        init = PromptTuningInit.SAMPLE_VOCAB if self.prompt_tuning.init == "sample_vocab" else PromptTuningInit.RANDOM
        config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=self.prompt_tuning.virtual_tokens,
                                    prompt_tuning_init=init)
        return get_peft_model(model, config)

    def adapter_off_is_base(self) -> bool:
        return True
