"""Parameter strategies, registered by their config name."""
from tuna.methods.base import Method
from tuna.methods.chain_lora import ChainLora
from tuna.methods.freeze import Freeze
from tuna.methods.full import Full
from tuna.methods.hft import Hft
from tuna.methods.ia3 import Ia3
from tuna.methods.longlora import LongLora
from tuna.methods.lora import Dora, Lora, Rslora
from tuna.methods.prompt_tuning import Prefix, PromptTuning
from tuna.methods.s2ft import S2ft
from tuna.methods.sparse import Sparse

REGISTRY: dict[str, type[Method]] = {cls.name: cls for cls in (Full, Freeze, Lora, Dora, Rslora, Hft, Sparse, S2ft,
                                                                ChainLora, LongLora, Ia3, PromptTuning,
                                                                Prefix)}


def build(recipe) -> Method:
    """The run's method: its class from `recipe.method`, holding the sections it reads."""
    return REGISTRY[recipe.method].from_recipe(recipe)


# Regularisation and stabilisation knobs that combine with any method: (config key, what it does, paper).
ANY_METHOD_KNOBS = (
    ("optim.layer_decay", "learning rate x decay per block below the top",
     "Fine-Tuning Large Neural Language Models for Biomedical NLP"),
    ("init.reinit_top_layers", "re-initialise the top k blocks before training",
     "Fine-Tuning Large Neural Language Models for Biomedical NLP"),
    ("optim.clip_per_component", "clip each module's gradient norm on its own", "Component-Wise Gradient Norm Clipping"),
    ("train.neftune_alpha", "uniform noise on the input embeddings while training",
     "NEFTune: Noisy Embeddings Improve Instruction Finetuning"),
    ("data.mask_thought_ratio", "mask a fraction of the response's input tokens, labels unchanged",
     "Masked Thought: Simply Masking Partial Reasoning Steps Can Improve Mathematical Reasoning Learning"),
    ("data.drop_question", "train on the responses alone, questions removed", "QFFT, Question-Free Fine-Tuning for "
     "Adaptive Reasoning"),
    ("data.prompt_variants", "each step, each example under a random paraphrase of its instruction",
     "PAFT: Prompt-Agnostic Fine-Tuning"),
)
