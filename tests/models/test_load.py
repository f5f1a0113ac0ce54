import pytest

from tuna.errors import UserError
from tuna.models.load import load_any, resolve


def test_local_checkpoint_directory_loads_with_its_tokenizer(tiny_model_dir):
    model, tokenizer = load_any(str(tiny_model_dir))
    assert model.config.model_type == "llama" and tokenizer.chat_template


def test_hub_id_resolves_from_the_offline_cache_only(tiny_model_dir, tmp_path, monkeypatch):
    # Lay out a Hugging Face cache entry by hand, as a previous `from_pretrained` would have.
    import shutil

    cache = tmp_path / "hub"
    snapshot = cache / "models--tiny-org--tiny-llama" / "snapshots" / "0123abc"
    shutil.copytree(tiny_model_dir, snapshot)
    (cache / "models--tiny-org--tiny-llama" / "refs").mkdir()
    (cache / "models--tiny-org--tiny-llama" / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert resolve("tiny-org/tiny-llama") == "tiny-org/tiny-llama"
    model, _ = load_any("tiny-org/tiny-llama")
    assert model.config.hidden_size == 32
    with pytest.raises(UserError, match="not in the local Hugging Face cache, and tuna never downloads"):
        resolve("tiny-org/absent-model")


def test_missing_paths_get_clear_errors(tmp_path):
    with pytest.raises(UserError, match="GGUF file not found"):
        resolve(str(tmp_path / "m.gguf"))
    with pytest.raises(UserError, match="model not found"):
        resolve(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a model directory"):
        resolve(str(tmp_path / "empty"))


def test_a_file_that_is_not_gguf_or_is_damaged_is_refused_without_a_cache_entry(tmp_path, monkeypatch):
    from tuna.models.gguf_cache import tuna_home

    monkeypatch.setenv("TUNA_HOME", str(tmp_path / "home"))
    (tmp_path / "text.gguf").write_text("not a model")
    with pytest.raises(UserError, match="text.gguf is not a GGUF file"):
        resolve(str(tmp_path / "text.gguf"))
    (tmp_path / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\x07")  # the header, cut off
    with pytest.raises(UserError, match="cannot convert .*cut.gguf"):
        resolve(str(tmp_path / "cut.gguf"))
    models = tuna_home() / "models"
    assert not models.exists() or not any(models.iterdir())  # nothing half-converted is left to be trusted
