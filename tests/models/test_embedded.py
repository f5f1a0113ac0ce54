"""The real embedded SmolLM2-135M-Instruct: it loads offline, its chat template masks exactly, and it trains."""
import math

import pytest
import torch

from tuna.config import validate_recipe
from tuna.data.formats import Example
from tuna.data.render import IGNORE, render_example
from tuna.data.synthetic import date_task
from tuna.models.load import load_tokenizer, resolve
from tuna.train.loop import train
from tuna.rundir import read_metrics

pytestmark = pytest.mark.slow


def test_embedded_template_masks_exactly_the_assistant_turns():
    tokenizer = load_tokenizer(resolve("smollm2-135m"))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}]
    rendered = render_example(Example(messages=messages), tokenizer)
    trained = [t for t, label in zip(rendered.input_ids, rendered.labels) if label != IGNORE]
    assert tokenizer.decode(trained) == "Hello!<|im_end|>4<|im_end|>"


def test_embedded_model_trains_a_few_lora_steps(tmp_path):
    from tuna.demo import write_jsonl

    write_jsonl(tmp_path / "train.jsonl", date_task(12, seed=1))
    recipe = validate_recipe({
        "model": "smollm2-135m", "method": "lora", "lora": {"r": 4},
        "data": {"path": str(tmp_path / "train.jsonl"), "eval_split": 0.0, "max_tokens": 128},
        "train": {"max_steps": 3, "micro_batch_size": 2, "lr": 1e-3, "warmup_ratio": 0.0, "save_every": 0},
        "output_dir": str(tmp_path / "run"),
    })
    result = train(recipe, progress=False)
    losses = [r["train/loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert result.steps == 3 and all(math.isfinite(x) for x in losses)
    assert 100e6 < result.total_params < 200e6 and result.trainable_params < result.total_params / 50
    from safetensors.torch import load_file

    adapter = load_file(tmp_path / "run" / "final" / "adapter_model.safetensors")
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and any(float(t.abs().max()) > 0 for t in lora_b)  # B starts at zero; training moved it
