"""`tuna export --gguf`: the file is judged by a round trip through transformers' own GGUF loader, which undoes
llama.cpp's layout (the llama q/k permutation, the tensor names, the tied output), so a wrong permutation or
tensor map shows as logits that differ from the source model's."""
from __future__ import annotations

import gguf
import pytest
import torch

from tuna.cli import main
from tuna.gguf_export import export_gguf

PROMPTS = [torch.randint(3, 400, (1, 6), generator=torch.Generator().manual_seed(i)) for i in range(20)]
# f16 keeps 11 significant bits, bf16 8: each weight moves by at most 2^-11 or 2^-8 of itself. Measured on these
# models the logits move by about 2 such units of the largest logit; 8 units leaves room, and stays 10x (bf16) to
# 60x (f16) below what a wrong q/k permutation does to the llama model (0.78 of logits up to 2.5).
UNIT_ROUNDOFF = {"f16": 2**-11, "bf16": 2**-8}


def tolerance(quant: str, logits: torch.Tensor) -> float:
    return 8 * UNIT_ROUNDOFF[quant] * logits.abs().max().item()


def load_gguf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()


def load_dir(directory):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory).eval()


def logits(model, prompts=PROMPTS) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(p).logits for p in prompts])


def greedy(model, prompt, n=8) -> list[int]:
    return model.generate(prompt, max_new_tokens=n, do_sample=False, pad_token_id=0)[0, prompt.shape[1]:].tolist()


def tensor_types(path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def field(path, key):
    return gguf.GGUFReader(path).get_field(key).contents()


def rescaled_copy(source, target, scale: float, snap_to_q8_0: bool = False):
    """The model in `source` with its matrices times `scale`, saved with its tokenizer in `target`.

    The fixtures' weights (std 0.02) leave attention near uniform, so a wrong q/k permutation would move the
    logits by little; x5 gives std 0.1, about 1/sqrt(fan-in) as in a trained model, and attention then shapes
    the output. `snap_to_q8_0` rounds each 32-value block onto the grid q8_0 stores exactly (integer multiples of
    an f16 step, the largest at 127 steps), so q8_0's own rounding, which on a random model flips near-tied
    greedy choices, is out of the comparison and what is left is our layout.
    """
    model = load_dir(source)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.mul_(scale)
                if snap_to_q8_0:
                    blocks = param.reshape(-1, 32)
                    step = (blocks.abs().amax(1, keepdim=True) / 127).half().float().clamp(min=2**-24)  # 0: pad row
                    param.copy_((torch.round(blocks / step).clamp(-127, 127) * step).reshape(param.shape))
    model.save_pretrained(target)
    copy_tokenizer(source, target)
    return model


@pytest.fixture(scope="module")
def realistic(tiny_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("realistic")
    return {kind: (rescaled_copy(d, root / kind, 5.0), root / kind) for kind, d in tiny_dirs.items()}


@pytest.mark.parametrize("quant", ["f16", "bf16"])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_f16_and_bf16_logits_match_the_source(kind, quant, realistic, tmp_path):
    source, directory = realistic[kind]
    out = tmp_path / f"{kind}.gguf"
    done = export_gguf(directory, out, quant, progress=False)

    assert done == {"out": str(out), "bytes": out.stat().st_size, "quant": quant, "tensors": len(tensor_types(out)),
                    "f16_fallbacks": 0}
    expected = logits(source)
    torch.testing.assert_close(logits(load_gguf(out)), expected, atol=tolerance(quant, expected), rtol=0)
    assert ("output.weight" in tensor_types(out)) == (kind == "qwen2")  # the tied llama has no output matrix


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_q8_0_greedy_tokens_match_on_20_prompts(kind, tiny_dirs, tmp_path):
    source = rescaled_copy(tiny_dirs[kind], tmp_path / "src", 5.0, snap_to_q8_0=True)
    out = tmp_path / f"{kind}.gguf"
    export_gguf(tmp_path / "src", out, "q8_0", progress=False)

    types = tensor_types(out)
    assert {types[name] for name in types if name.endswith(("norm.weight", ".bias"))} == {"F32"}
    assert {types[name] for name in types if not name.endswith(("norm.weight", ".bias"))} == {"Q8_0"}
    exported = load_gguf(out)
    assert [greedy(exported, p) for p in PROMPTS] == [greedy(source, p) for p in PROMPTS]
    torch.testing.assert_close(logits(exported), logits(source), atol=1e-4, rtol=0)


@pytest.mark.parametrize("quant,matrix_type,file_type", [("f16", "F16", 1), ("bf16", "BF16", 32), ("q8_0", "Q8_0", 7),
                                                         ("q4_0", "Q4_0", 2)])
def test_tensor_types_norms_f32_and_odd_rows_f16(quant, matrix_type, file_type, tmp_path):
    from tests.conftest import build_model, build_tokenizer

    build_model(tmp_path / "m", "llama", len(build_tokenizer(tmp_path / "m")), intermediate=48)  # down_proj rows: 48
    out = tmp_path / "m.gguf"
    done = export_gguf(tmp_path / "m", out, quant, progress=False)

    types = tensor_types(out)
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    assert types["blk.0.attn_q.weight"] == types["blk.0.ffn_up.weight"] == matrix_type
    assert types["token_embd.weight"] == ("Q8_0" if quant == "q4_0" else matrix_type)  # tied: the output matrix
    assert types["blk.0.ffn_down.weight"] == ("F16" if quant.startswith("q") else matrix_type)
    assert done["f16_fallbacks"] == (2 if quant.startswith("q") else 0)  # one ffn_down per layer
    assert field(out, "general.file_type") == file_type


def test_hyperparameters_under_llama_cpp_keys(tiny_dirs, tmp_path):
    load_dir(tiny_dirs["qwen2"]).save_pretrained(tmp_path / "qwen2")
    copy_tokenizer(tiny_dirs["qwen2"], tmp_path / "qwen2")
    (tmp_path / "qwen2" / "README.md").write_text("---\nlicense: mit\n---\n# a model card\n")
    out = tmp_path / "q.gguf"
    export_gguf(tmp_path / "qwen2", out, "f16", progress=False)

    expected = {"general.architecture": "qwen2", "qwen2.context_length": 512, "qwen2.embedding_length": 32,
                "qwen2.block_count": 2, "qwen2.feed_forward_length": 64, "qwen2.attention.head_count": 4,
                "qwen2.attention.head_count_kv": 2, "qwen2.rope.freq_base": 10000.0, "qwen2.vocab_size": 400,
                "qwen2.rope.dimension_count": 8, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2",
                "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
                "tokenizer.ggml.padding_token_id": 0, "tokenizer.ggml.add_bos_token": False,
                "general.name": "qwen2", "general.basename": "qwen2", "general.license": "mit"}
    assert {key: field(out, key) for key in expected} == expected
    assert field(out, "qwen2.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= tensor_types(out).keys()
    assert field(out, "tokenizer.ggml.token_type") == [3, 3, 3] + [1] * 397  # the specials are CONTROL


@pytest.mark.parametrize("scaling,expected", [
    ({"type": "linear", "factor": 2.0}, {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0,
                                         "llama.context_length": 1024}),
    ({"type": "yarn", "factor": 4.0}, {"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0,
                                       "llama.rope.scaling.original_context_length": 512,
                                       "llama.context_length": 2048})])
def test_rope_scaling_as_tuna_trains_it_is_written(scaling, expected, tiny_dirs, tmp_path):
    from tuna.models.rope import RopeScaling, apply_rope_scaling

    model = load_dir(tiny_dirs["llama"])
    apply_rope_scaling(model, RopeScaling(**scaling))
    model.save_pretrained(tmp_path / "m")
    copy_tokenizer(tiny_dirs["llama"], tmp_path / "m")
    export_gguf(tmp_path / "m", tmp_path / "m.gguf", "f16", progress=False)

    assert {key: field(tmp_path / "m.gguf", key) for key in expected} == expected


def test_llama3_rope_goes_in_as_llama_cpp_frequency_factors_and_dynamic_ntk_is_refused(tiny_dirs, tmp_path):
    """The factors are checked against Meta's definition as llama.cpp's converter computes it."""
    import math

    from transformers import AutoModelForCausalLM

    from tuna.errors import UserError

    config = load_dir(tiny_dirs["llama"]).config
    config.rope_parameters = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 64, "rope_theta": 10000.0}
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "m")
    copy_tokenizer(tiny_dirs["llama"], tmp_path / "m")
    export_gguf(tmp_path / "m", tmp_path / "m.gguf", "f16", progress=False)

    expected = []
    for i in range(0, 8, 2):
        wavelen = 2 * math.pi * 10000.0 ** (i / 8)
        smooth = (64 / wavelen - 1.0) / (4.0 - 1.0)
        expected.append(1.0 if wavelen < 64 / 4.0 else 8.0 if wavelen > 64 / 1.0 else 1 / ((1 - smooth) / 8.0 + smooth))
    stored = next(t for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors if t.name == "rope_freqs.weight")
    assert stored.data.tolist() == pytest.approx(expected, rel=1e-5)
    assert expected[0] == 1.0 and expected[-1] == 8.0

    config.rope_parameters = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "d")
    copy_tokenizer(tiny_dirs["llama"], tmp_path / "d")
    with pytest.raises(UserError, match="llama.cpp has no dynamic RoPE scaling"):
        export_gguf(tmp_path / "d", tmp_path / "d.gguf", "f16", progress=False)
    assert not (tmp_path / "d.gguf").exists()


def copy_tokenizer(source, target) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(source).save_pretrained(target)


TEXTS = ["The quick brown fox", "Convert March 5, 2021 -> 2021-03-05!", "  two  spaces\nand a newline",
         "café naïve 東京", "<|im_start|>user\nhello<|im_end|>"]


@pytest.mark.parametrize("kind,pre", [("llama", "gpt-2"), ("qwen2", "qwen2")])
def test_tokenizer_ids_and_chat_template_round_trip(kind, pre, tiny_dirs, tmp_path):
    """One tokenizer, two splits: transformers gives a qwen2 checkpoint Qwen2's own split (digits one by one),
    which the file has to name for llama.cpp to split so too."""
    from transformers import AutoTokenizer

    out = tmp_path / "m.gguf"
    export_gguf(tiny_dirs[kind], out, "f16", progress=False)

    source = AutoTokenizer.from_pretrained(tiny_dirs[kind])
    loaded = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    assert field(out, "tokenizer.ggml.pre") == pre
    assert [loaded(t)["input_ids"] for t in TEXTS] == [source(t)["input_ids"] for t in TEXTS]
    assert [loaded.decode(source(t)["input_ids"]) for t in TEXTS] == TEXTS
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == (source.bos_token, source.eos_token,
                                                                       source.pad_token)
    messages = [{"role": "user", "content": "what is 2 + 2?"}, {"role": "assistant", "content": "4"},
                {"role": "user", "content": "and 3 + 3?"}]
    rendered = source.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "You are a tiny test model." in rendered
    assert loaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == rendered


def test_a_lora_run_is_merged_before_export(tiny_recipe, tiny_model_dir, tmp_path):
    from peft import PeftModel

    from tuna.train.loop import train

    train(tiny_recipe(train={"max_steps": 6, "lr": 5e-2}), progress=False)
    out = tmp_path / "run.gguf"
    export_gguf(tmp_path / "run", out, "f16", progress=False)

    merged = PeftModel.from_pretrained(load_dir(tiny_model_dir), tmp_path / "run" / "final").merge_and_unload().eval()
    expected = logits(merged)
    torch.testing.assert_close(logits(load_gguf(out)), expected, atol=tolerance("f16", expected), rtol=0)
    assert (logits(load_dir(tiny_model_dir)) - expected).abs().max() > 10 * tolerance("f16", expected)  # adapter did
    assert field(out, "general.base_model.0.name") == str(tiny_model_dir.resolve())


@pytest.mark.slow
def test_the_embedded_model_round_trips_in_f16(tmp_path):
    """f16, not q8_0: the embedded model is itself a Q4_1 file, and re-rounding it to q8_0 changes about 3% of
    its teacher-forced top-1 choices (docs/deploy.md), so greedy equality is not what q8_0 promises."""
    from transformers import AutoTokenizer

    from tuna.models.load import load_any

    source, tokenizer = load_any("smollm2-135m")
    out = tmp_path / "smollm2.gguf"
    done = export_gguf("smollm2-135m", out, "f16", progress=False)
    exported = load_gguf(out)
    loaded = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)

    metadata = gguf.GGUFReader(out)
    assert done["tensors"] == 272 and metadata.get_field("general.license").contents() == "apache-2.0"
    assert metadata.get_field("general.basename").contents() == "SmolLM2-135M-Instruct"
    texts = TEXTS + ["<filename>tuna.py<file_sep>x = 12345"]  # two of its 17 control tokens beside the chat ones
    assert [loaded(t)["input_ids"] for t in texts] == [tokenizer(t)["input_ids"] for t in texts]
    chats = [[{"role": "user", "content": q}] for q in ("What is the capital of France?", "Name three colors.")]
    rendered = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    assert [loaded.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats] == rendered
    prompts = [tokenizer(r, return_tensors="pt")["input_ids"] for r in rendered]
    assert [greedy(exported, p, 10) for p in prompts] == [greedy(source.eval(), p, 10) for p in prompts]


def run_cli(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err


def test_bad_input_exits_2_with_one_line(tiny_dirs, tmp_path, capsys):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=400, bos_token_id=1, eos_token_id=2)
                    ).save_pretrained(tmp_path / "gpt2")
    AutoTokenizer.from_pretrained(tiny_dirs["llama"]).save_pretrained(tmp_path / "gpt2")
    capsys.readouterr()
    code, err = run_cli(["export", str(tmp_path / "gpt2"), "--gguf", str(tmp_path / "g.gguf")], capsys)
    assert code == 2 and err == "tuna: error: GGUF export supports llama and qwen2 models; this one is gpt2\n"
    assert list(tmp_path.glob("*.gguf*")) + list(tmp_path.glob(".g.gguf*")) == []

    taken = tmp_path / "taken.gguf"
    taken.write_text("keep me")
    code, err = run_cli(["export", str(tiny_dirs["llama"]), "--gguf", str(taken)], capsys)
    assert code == 2 and err == f"tuna: error: {taken} exists; choose a new file name\n"
    assert taken.read_text() == "keep me"

    with pytest.raises(SystemExit) as exit_:
        main(["export", str(tiny_dirs["llama"]), "--gguf", str(tmp_path / "x.gguf"), "--quant", "q5_k"])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after argparse's usage line
    assert last.startswith("tuna export: error: argument --quant: invalid choice: 'q5_k' (choose from ")
    assert all(q in last for q in ("f16", "bf16", "q8_0", "q4_0"))


def test_the_cli_writes_the_file_and_says_what_it_wrote(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "sub" / "m.gguf"
    assert main(["export", str(tiny_dirs["llama"]), "--gguf", str(out), "--quant", "q8_0"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line == f"GGUF written to {out}: {out.stat().st_size / 1e6:.1f} MB, q8_0, 20 tensors"
    assert [p.name for p in out.parent.iterdir()] == ["m.gguf"]  # no partial file left beside it
