import pytest
import torch

from tuna import rundir
from tuna.config import validate_recipe
from tuna.models.rope import RopeScaling
from tuna.errors import UserError
from tuna.export import export_merged
from tuna.models.load import load_any, load_model
from tuna.models.rope import apply_rope_scaling

WINDOW = 512  # max_position_embeddings of the tiny conftest models


@torch.no_grad()
def logits(model, positions: torch.Tensor) -> torch.Tensor:
    ids = torch.arange(3, 3 + len(positions))[None]
    return model(input_ids=ids, position_ids=positions[None]).logits


def differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not torch.allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_linear_scaling_reads_position_2p_as_the_original_p(tiny_dirs, kind):
    base, scaled = load_model(str(tiny_dirs[kind])).eval(), load_model(str(tiny_dirs[kind])).eval()
    apply_rope_scaling(scaled, RopeScaling(type="linear", factor=2))
    positions = torch.arange(0, 24, 3)
    torch.testing.assert_close(logits(scaled, 2 * positions), logits(base, positions), rtol=0, atol=1e-6)
    assert differs(logits(scaled, positions), logits(base, positions))
    assert scaled.config.max_position_embeddings == 2 * WINDOW
    apply_rope_scaling(scaled, RopeScaling(type="linear", factor=2))  # again: already so, nothing changes
    assert scaled.config.max_position_embeddings == 2 * WINDOW
    torch.testing.assert_close(logits(scaled, 2 * positions), logits(base, positions), rtol=0, atol=1e-6)


def test_dynamic_ntk_changes_nothing_within_the_original_window_and_rescales_beyond(tiny_model_dir):
    base, scaled = load_model(str(tiny_model_dir)).eval(), load_model(str(tiny_model_dir)).eval()
    apply_rope_scaling(scaled, RopeScaling(type="dynamic", factor=4))
    within = torch.arange(WINDOW - 8, WINDOW)
    beyond = torch.arange(3 * WINDOW, 3 * WINDOW + 8)
    torch.testing.assert_close(logits(scaled, within), logits(base, within), rtol=0, atol=1e-6)
    assert differs(logits(scaled, beyond), logits(base, beyond))
    assert scaled.config.rope_parameters["rope_type"] == "dynamic"
    assert scaled.config.max_position_embeddings == WINDOW  # where transformers starts rescaling


def test_yarn_records_its_parameters_and_changes_the_outputs(tiny_model_dir):
    base, scaled = load_model(str(tiny_model_dir)).eval(), load_model(str(tiny_model_dir)).eval()
    apply_rope_scaling(scaled, RopeScaling(type="yarn", factor=4))
    params = scaled.config.rope_parameters
    assert (params["rope_type"], params["factor"], params["original_max_position_embeddings"]) == ("yarn", 4, WINDOW)
    assert scaled.config.max_position_embeddings == 4 * WINDOW
    positions = torch.arange(100, 108)
    assert differs(logits(scaled, positions), logits(base, positions))


@pytest.mark.parametrize("scaling", [RopeScaling(type="linear", factor=2), RopeScaling(type="dynamic", factor=4),
                                     RopeScaling(type="yarn", factor=4)], ids=lambda s: s.type)
def test_a_saved_scaled_model_reloads_with_its_scaling(tiny_model_dir, tmp_path, scaling):
    base, scaled = load_model(str(tiny_model_dir)).eval(), load_model(str(tiny_model_dir)).eval()
    apply_rope_scaling(scaled, scaling)
    scaled.save_pretrained(tmp_path)
    reloaded = load_model(str(tmp_path)).eval()
    assert reloaded.config.rope_parameters == scaled.config.rope_parameters
    assert reloaded.config.max_position_embeddings == scaled.config.max_position_embeddings
    positions = torch.arange(3 * WINDOW, 3 * WINDOW + 8)
    torch.testing.assert_close(logits(reloaded, positions), logits(scaled, positions), rtol=0, atol=1e-6)
    assert differs(logits(reloaded, positions), logits(base, positions))


def save_adapter(base_dir, final):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(load_model(str(base_dir)), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero: give the adapter an effect of its own
            param.data.normal_(std=0.5)
    peft_model.save_pretrained(final)


def save_sparse_delta(base_dir, final):
    from tuna.models.load import load_tokenizer
    from tuna.models.sparse_delta import save_delta

    weight = load_model(str(base_dir)).model.layers[0].self_attn.q_proj.weight
    torch.manual_seed(0)
    indices = torch.randperm(weight.numel())[:50]
    load_tokenizer(str(base_dir)).save_pretrained(final)
    save_delta({"model.layers.0.self_attn.q_proj.weight": (indices, torch.randn(50))}, {
        "model.layers.0.self_attn.q_proj.weight": list(weight.shape)}, final)


@pytest.mark.parametrize("save_final", [save_adapter, save_sparse_delta], ids=["lora", "sparse"])
def test_a_run_directory_gets_its_scaling_before_the_adapter_or_delta(tiny_model_dir, tmp_path, save_final):
    save_final(tiny_model_dir, tmp_path / "final")
    runs = {}
    for name, scaling in {"plain": None, "scaled": {"type": "linear", "factor": 2}}.items():
        run = tmp_path / name
        (run / rundir.FINAL).parent.mkdir()
        (run / rundir.FINAL).symlink_to(tmp_path / "final")
        recipe = validate_recipe({"model": {"name": str(tiny_model_dir), "rope_scaling": scaling}})
        (run / rundir.CONFIG).write_text(recipe.to_yaml())
        runs[name] = load_any(str(run))[0].eval()
    assert runs["scaled"].config.rope_parameters["rope_type"] == "linear"
    positions = torch.arange(0, 24, 3)
    torch.testing.assert_close(logits(runs["scaled"], 2 * positions), logits(runs["plain"], positions),
                               rtol=0, atol=1e-6)
    assert differs(logits(runs["plain"], positions), logits(load_model(str(tiny_model_dir)).eval(), positions))
    merged = load_model(str(export_merged(tmp_path / "scaled", tmp_path / "merged"))).eval()  # keeps the scaling
    torch.testing.assert_close(logits(merged, 2 * positions), logits(runs["plain"], positions), rtol=0, atol=1e-5)


def test_a_model_without_rope_is_refused():
    from transformers import AutoModelForCausalLM, GPT2Config

    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100,
                                                       bos_token_id=0, eos_token_id=0))
    with pytest.raises(UserError, match="no rotary position embedding"):
        apply_rope_scaling(gpt2, RopeScaling(type="linear", factor=2))


@pytest.mark.parametrize("second", [RopeScaling(type="yarn", factor=2), RopeScaling(type="linear", factor=4)],
                         ids=["other kind", "other factor"])
def test_a_scaling_is_not_stacked_on_another(tiny_model_dir, second):
    model = load_model(str(tiny_model_dir))
    apply_rope_scaling(model, RopeScaling(type="linear", factor=2))
    with pytest.raises(UserError, match="already uses linear x2 RoPE scaling"):
        apply_rope_scaling(model, second)


@pytest.mark.parametrize("kind", ["linear", "dynamic", "yarn"])
def test_an_unknown_original_window_must_be_given(tiny_model_dir, kind):
    model = load_model(str(tiny_model_dir))
    object.__setattr__(model.config, "max_position_embeddings", None)  # a config that records no window
    with pytest.raises(UserError, match="set model.rope_scaling.original_max_position_embeddings"):
        apply_rope_scaling(model, RopeScaling(type=kind, factor=2))
    apply_rope_scaling(model, RopeScaling(type=kind, factor=2, original_max_position_embeddings=WINDOW))
    assert model.config.rope_parameters["rope_type"] == kind
