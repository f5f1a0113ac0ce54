import pytest
import torch

from tuna.errors import UserError
from tuna.models.layers import decoder_layers
from tuna.models.load import load_base
from tuna.models.reinit import reinit_top_layers
from tuna.train.loop import train
from tuna.rundir import read_metrics


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.fixture
def model_with_trained_norms(tiny_model_dir):
    """The tiny model with every RMSNorm scale moved off its init (1), so resetting it shows."""
    model, _ = load_base(str(tiny_model_dir))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(2.0)
    return model


def test_reinit_redraws_the_top_layer_and_leaves_the_rest(model_with_trained_norms):
    model = model_with_trained_norms
    before = snapshot(model)
    torch.manual_seed(0)
    reinit_top_layers(model, 1)
    after = snapshot(model)
    top = "model.layers.1."
    matrices = [n for n in before if n.startswith(top) and before[n].dim() == 2]
    norms = [n for n in before if n.startswith(top) and "norm" in n]
    assert len(matrices) == 7 and len(norms) == 2
    std = model.config.initializer_range
    for name in matrices:
        assert not torch.equal(after[name], before[name]), name
        # _init_weights draws linear weights from N(0, initializer_range); with >= 512 entries the sample
        # std is within ~7% of it (3 sigma), so 20% tells that init apart from any other
        assert float(after[name].std()) == pytest.approx(std, rel=0.2), name
        assert abs(float(after[name].mean())) < std / 4, name
    for name in norms:  # transformers 5 `_init_weights` sets RMSNorm scales to ones
        assert torch.equal(after[name], torch.ones_like(after[name])), name
    for name in before:
        if not name.startswith(top):
            assert torch.equal(after[name], before[name]), name  # lower layer (norms at 2 too), embeddings, final norm


def test_reinit_follows_the_torch_seed(tiny_model_dir):
    draws = []
    for _ in range(2):
        model, _ = load_base(str(tiny_model_dir))
        torch.manual_seed(123)
        reinit_top_layers(model, 2)
        draws.append(snapshot(model))
    assert all(torch.equal(draws[0][n], draws[1][n]) for n in draws[0])


def test_reinit_all_layers_keeps_the_embeddings(tiny_model_dir):
    model, _ = load_base(str(tiny_model_dir))
    before = snapshot(model)
    reinit_top_layers(model, len(decoder_layers(model)))
    after = snapshot(model)
    assert all(not torch.equal(after[n], before[n]) for n in before if ".layers." in n and after[n].dim() == 2)
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])


def test_more_layers_than_the_model_has_is_a_user_error(tiny_model_dir):
    model, _ = load_base(str(tiny_model_dir))
    with pytest.raises(UserError, match="init.reinit_top_layers is 3 but the model has only 2 layers"):
        reinit_top_layers(model, 3)


def test_reinit_with_lora_is_refused_because_the_layers_stay_frozen(tiny_recipe):
    with pytest.raises(UserError, match="method `lora` keeps frozen"):
        train(tiny_recipe(lora={"r": 4}, init={"reinit_top_layers": 1}), progress=False)


def test_reinit_with_full_trains_from_the_new_weights(tiny_recipe, tmp_path):
    def first_loss(name, **init):
        recipe = tiny_recipe(method="full", train={"max_steps": 2, "lr": 1e-3}, eval={"every": 0},
                             output_dir=str(tmp_path / name), **init)
        assert train(recipe, progress=False).steps == 2
        return read_metrics(tmp_path / name / "metrics.jsonl")[0]["train/loss"]

    # the first loss is computed before any update, so it differs only if the starting weights did
    assert first_loss("reinit", init={"reinit_top_layers": 1}) != first_loss("plain")
