"""(IA)³: learned vectors that rescale the keys, the values and the FFN's inner activations.

"Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning" (Liu et al.):
l_k and l_v multiply the attention keys and values, l_ff the input of the FFN's down projection,
each initialised to ones, so the model starts unchanged; everything else is frozen. PEFT implements
it; its per-architecture defaults choose the modules (Llama: k_proj, v_proj, down_proj) unless
`ia3.target_modules` names them. Saved as a standard PEFT adapter.
"""
from __future__ import annotations

from pydantic import Field

from tuna.methods.base import Method
from tuna.sections import Section


class Ia3Knobs(Section):
    target_modules: list[str] | None = Field(None, description="modules whose output (or, for feedforward ones, "
                                                               "input) is rescaled; unset: PEFT's choice for the model")
    feedforward_modules: list[str] | None = Field(None, description="which of them rescale their input")


class Ia3(Method):
    name = "ia3"
    summary = "learned vectors rescaling keys, values and FFN activations (PEFT (IA)^3)"
    paper = "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning ((IA)^3)"
    default_lr = 3e-3
    sections = {"ia3": Ia3Knobs}
    saves_adapter = True

    def prepare(self, model, calibration=None):
        from peft import IA3Config, get_peft_model

        config = IA3Config(task_type="CAUSAL_LM", target_modules=self.ia3.target_modules,
                           feedforward_modules=self.ia3.feedforward_modules)
        return get_peft_model(model, config)

    def adapter_off_is_base(self) -> bool:
        return True
