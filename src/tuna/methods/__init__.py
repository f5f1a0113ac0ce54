"""Parameter strategies, registered by their config name."""
from tuna.methods import freeze, full, hft, lora
from tuna.methods.base import Method

REGISTRY: dict[str, Method] = {m.METHOD.name: m.METHOD for m in (full, freeze, lora, hft)}
