"""Losses, registered by their config name."""
from tuna.objectives import sft

REGISTRY = {"sft": sft.loss}
