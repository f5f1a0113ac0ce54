"""S²FT: structured sparse fine-tuning, "select sparsely, compute densely".

In every decoder block, `s2ft.heads_per_layer` attention heads and `s2ft.ffn_channels` FFN channels
are chosen at random (seeded by `s2ft.seed`). What trains are the input columns of the output
projection that read the chosen heads and the input columns of the down projection that read the
chosen channels: the coupled structures the paper updates. The paper co-permutes the weights so the
chosen parts form one dense block; here the same dense block is a trainable [out, k] matrix D fed
by gathering the chosen inputs, y = x·W0ᵀ + x[..., cols]·Dᵀ, so the backward pass computes a
gradient only for D (partial backpropagation) and W0 stays frozen and bit-identical. The result is
saved as a sparse delta (the columns of W0 + D), composable like `sparse`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from tuna.errors import UserError
from tuna.methods.base import Method
from tuna.models.layers import decoder_layers
from tuna.models.sparse_delta import save_delta
from tuna.sections import Section


class S2ftKnobs(Section):
    heads_per_layer: int = Field(2, ge=0, description="attention heads per block whose output-projection columns train")
    ffn_channels: int = Field(64, ge=0, description="FFN channels per block whose down-projection columns train")
    seed: int = Field(0, description="seeds the choice of heads and channels")

    @model_validator(mode="after")
    def _something_trains(self) -> "S2ftKnobs":
        if self.heads_per_layer == 0 and self.ffn_channels == 0:
            raise ValueError("s2ft.heads_per_layer and s2ft.ffn_channels are both 0: nothing would train")
        return self


def attach_columns(module: nn.Linear, columns: torch.Tensor) -> None:
    module.register_buffer("s2ft_columns", columns)
    module.s2ft_delta = nn.Parameter(torch.zeros(module.out_features, len(columns), device=module.weight.device))
    module.register_forward_hook(lambda m, args, out: out + F.linear(args[0][..., m.s2ft_columns], m.s2ft_delta))


def block_projections(layer) -> tuple[nn.Linear, nn.Linear]:
    """(attention output projection, FFN down projection) of a Llama-style block."""
    try:
        return layer.self_attn.o_proj, layer.mlp.down_proj
    except AttributeError:
        raise UserError(f"s2ft supports Llama-style blocks (self_attn.o_proj, mlp.down_proj); "
                        f"{type(layer).__name__} has neither") from None


def choose(model, cfg: S2ftKnobs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per block: (o_proj input columns of the chosen heads, down_proj input columns of the chosen channels)."""
    config = model.config
    heads, head_dim = config.num_attention_heads, getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    channels = config.intermediate_size
    if cfg.heads_per_layer > heads:
        raise UserError(f"s2ft.heads_per_layer is {cfg.heads_per_layer} but the model has {heads} heads per layer")
    if cfg.ffn_channels > channels:
        raise UserError(f"s2ft.ffn_channels is {cfg.ffn_channels} but the model's FFN has {channels} channels")
    generator = torch.Generator().manual_seed(cfg.seed)
    picks = []
    for _ in decoder_layers(model):
        chosen_heads = torch.randperm(heads, generator=generator)[: cfg.heads_per_layer].sort().values
        head_columns = (chosen_heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
        ffn_columns = torch.randperm(channels, generator=generator)[: cfg.ffn_channels].sort().values
        picks.append((head_columns, ffn_columns))
    return picks


def adapted(model) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if hasattr(m, "s2ft_delta")}


class S2ft(Method):
    name = "s2ft"
    summary = "train the output/down-projection columns of a few heads and FFN channels per block"
    paper = "S²FT: Efficient, Scalable and Generalizable LLM Fine-tuning by Structured Sparsity"
    default_lr = 2e-4
    sections = {"s2ft": S2ftKnobs}

    def prepare(self, model, calibration=None):
        picks = choose(model, self.s2ft)
        for p in model.parameters():
            p.requires_grad_(False)
        for layer, columns in zip(decoder_layers(model), picks):
            for module, cols in zip(block_projections(layer), columns):
                if len(cols):
                    attach_columns(module, cols.to(module.weight.device))
        return model

    def save_final(self, model, out) -> None:
        """The trained columns as a sparse delta: flat index row·in + col for every (row, chosen col)."""
        delta, shapes = {}, {}
        for name, module in adapted(model).items():
            rows = torch.arange(module.out_features, device=module.s2ft_columns.device)
            flat = (rows[:, None] * module.in_features + module.s2ft_columns[None, :]).reshape(-1)
            delta[f"{name}.weight"] = (flat, module.s2ft_delta.reshape(-1))
            shapes[f"{name}.weight"] = list(module.weight.shape)
        save_delta(delta, shapes, out)
