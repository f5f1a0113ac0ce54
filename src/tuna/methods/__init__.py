"""Parameter strategies, registered by their config name."""
from tuna.methods import freeze, full, hft, lora
from tuna.methods.base import Method

REGISTRY: dict[str, Method] = {m.name: m for m in (full.METHOD, freeze.METHOD, lora.METHOD, lora.DORA, lora.RSLORA,
                                                   hft.METHOD)}
