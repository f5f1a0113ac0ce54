"""Parameter strategies, registered by their config name."""
from tuna.methods import chain_lora, freeze, full, hft, longlora, lora, s2ft, sparse
from tuna.methods.base import Method

REGISTRY: dict[str, Method] = {m.name: m for m in (full.METHOD, freeze.METHOD, lora.METHOD, lora.DORA, lora.RSLORA,
                                                   hft.METHOD, sparse.METHOD, s2ft.METHOD, chain_lora.METHOD,
                                                   longlora.METHOD)}

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
)
