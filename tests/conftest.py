"""Tiny random-initialised models and a tiny locally trained tokenizer: the whole suite runs offline."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Convert the date to ISO format: March 5, 2021 -> 2021-03-05",
    "You are a tiny test model. Answer briefly and exactly.",
    "0123456789 - : , . ? ! { } [ ] \" ' ( ) = + * /",
    "January February March April May June July August September October November December",
    "system user assistant tool hello world question answer what is the capital of France Paris",
]


def build_tokenizer(directory: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", chat_template=CHATML)
    tokenizer.save_pretrained(directory)
    return tokenizer


def build_model(directory: Path, kind: str, vocab_size: int, seed: int = 0, layers: int = 2,
                intermediate: int = 64):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    shape = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=intermediate, num_hidden_layers=layers,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                 bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config = LlamaConfig(**shape, tie_word_embeddings=True) if kind == "llama" else Qwen2Config(**shape, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    return model


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Checkpoint directories {'llama': ..., 'qwen2': ...}, each with the tiny tokenizer."""
    root = tmp_path_factory.mktemp("tiny")
    dirs = {}
    for kind in ("llama", "qwen2"):
        d = root / kind
        tokenizer = build_tokenizer(d)
        build_model(d, kind, len(tokenizer))
        dirs[kind] = d
    return dirs


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_dirs) -> Path:
    return tiny_dirs["llama"]


@pytest.fixture
def tiny_tokenizer(tiny_model_dir):
    from tuna.models.load import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def chat_data(tmp_path) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"what is {i} + {i}?"},
                          {"role": "assistant", "content": f"{2 * i}"}]} for i in range(40)]
    return write_jsonl(tmp_path / "chat.jsonl", rows)


@pytest.fixture
def tiny_recipe(tiny_model_dir, chat_data, tmp_path):
    """A fast, deterministic fp32 CPU recipe on the tiny model; tests override what they exercise."""
    from tuna.config import validate_recipe

    def make(**sections):
        raw = {"model": str(tiny_model_dir), "data": {"path": str(chat_data), "eval_split": 0.2},
               "train": {"max_steps": 6, "micro_batch_size": 4, "lr": 1e-2, "device": "cpu", "precision": "fp32",
                         "save_every": 2, "seed": 0},
               "eval": {"every": 3}, "output_dir": str(tmp_path / "run")}
        for key, value in sections.items():
            raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
        return validate_recipe(raw)

    return make
