"""How tuna's outputs name their base model, so that they load anywhere: by hub id.

PEFT records the path its base was loaded from, which for the embedded model is a cache directory
under TUNA_HOME that exists on one machine only. What travels is the Hub's name for the base: the
hub id the embedded model is a GGUF of, and a cached hub id as given. A local checkpoint directory
(or a `.gguf` file's converted checkpoint) has no id: it is named by its absolute path.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from tuna.models.load import HUB_IDS, resolve

LICENSES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0"}  # known without the base's own model card


def hub_id(spec: str) -> str:
    """The name a saved adapter and a model card give the base model `spec`."""
    if spec in HUB_IDS:
        return HUB_IDS[spec]
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":  # its converted checkpoint: what PEFT can load the base from
        return str(Path(resolve(spec)).resolve())
    return str(path.resolve()) if path.is_dir() else spec


def is_hub_id(name: str) -> bool:
    """`org/name`, as the Hub's metadata takes it (not a local path)."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


def name_base(adapter: Path, hub: str) -> None:
    """Make the PEFT adapter saved in `adapter` (if it is one) name its base `hub`."""
    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        return
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = hub
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def license_of(spec: str) -> str | None:
    """The base model's license: known for the embedded model, else from the base's own model card, if any."""
    hub = hub_id(spec)
    if hub in LICENSES:
        return LICENSES[hub]
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.repocard import metadata_load

    card = Path(hub) / "README.md" if Path(hub).is_dir() else try_to_load_from_cache(hub, "README.md")
    if not isinstance(card, (str, Path)) or not Path(card).is_file():
        return None
    try:
        found = (metadata_load(card) or {}).get("license")
    except yaml.YAMLError:  # a damaged card: the license is not known
        return None
    return found if isinstance(found, str) else None
