import math

import pytest
import torch

from tuna.models.load import load_base
from tuna.train.loop import train
from tuna.rundir import read_metrics
from tuna.train.neftune import add_neftune

ALPHA = 5.0


@pytest.fixture
def model_and_ids(tiny_model_dir):
    model, _ = load_base(str(tiny_model_dir))
    ids = torch.randint(3, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    return model, ids


def training_noise(model, ids) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean embeddings, what NEFTune adds to them in train mode)."""
    embed = model.get_input_embeddings()
    with torch.no_grad():
        clean = embed(ids)
        add_neftune(model, ALPHA)
        model.train()
        return clean, embed(ids) - clean


def test_training_embeddings_get_uniform_noise_of_alpha_over_sqrt_length_times_width(model_and_ids):
    model, ids = model_and_ids
    clean, noise = training_noise(model, ids)
    length, width = ids.size(1), clean.size(-1)
    bound = ALPHA / math.sqrt(length * width)
    assert noise.abs().max() <= bound * (1 + 1e-5)
    # uniform on [-bound, bound]: of 448 draws, some land in the outer half and the mean is ~0
    assert noise.abs().max() > bound / 2
    assert abs(float(noise.mean())) < bound / 4
    assert (noise != 0).float().mean() > 0.99


def test_the_noise_scales_with_the_padded_length(model_and_ids):
    model, _ = model_and_ids
    ids = torch.randint(3, model.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(1))
    clean, noise = training_noise(model, ids)
    assert noise.abs().max() <= ALPHA / math.sqrt(64 * clean.size(-1)) * (1 + 1e-5)


def test_eval_mode_sees_clean_embeddings_and_logits(model_and_ids):
    model, ids = model_and_ids
    model.eval()
    with torch.no_grad():
        clean_embeddings = model.get_input_embeddings()(ids)
        clean_logits = model(ids).logits
        handle = add_neftune(model, ALPHA)
        assert torch.equal(model.get_input_embeddings()(ids), clean_embeddings)
        assert torch.equal(model(ids).logits, clean_logits)
        model.train()
        assert not torch.equal(model(ids).logits, clean_logits)  # the hook is live in train mode
        handle.remove()
        assert torch.equal(model(ids).logits, clean_logits)  # removing it restores the clean model


def losses(run_dir) -> list[float]:
    return [r["train/loss"] for r in read_metrics(run_dir / "metrics.jsonl")]


def test_neftune_in_a_run_changes_the_losses_reproducibly(tiny_recipe, tmp_path):
    def run(name, **train_options):
        recipe = tiny_recipe(lora={"r": 4, "dropout": 0.0}, train={"max_steps": 2, **train_options},
                             eval={"every": 0}, output_dir=str(tmp_path / name))
        train(recipe, progress=False)
        return losses(tmp_path / name)

    plain = run("plain")
    noisy = run("noisy", neftune_alpha=ALPHA)
    again = run("again", neftune_alpha=ALPHA)
    assert noisy[0] != plain[0]  # the first loss is computed before any update: the noise itself moved it
    assert noisy == again  # the noise comes from the seeded RNG
