"""`tuna export RUN --gguf OUT.gguf`: one file that llama.cpp, Ollama and LM Studio run, written in pure Python.

Our own compact converter on the `gguf` package (its writer, tensor-name map and quantisers), for the two
architectures whose layout we check by a round trip through transformers' GGUF loader: llama and qwen2.
It does what llama.cpp's `convert_hf_to_gguf.py` does for them:
- llama's q/k rows are permuted into llama.cpp's rotary layout (qwen2's are not; its q/k/v biases go as they are);
- a tied output matrix is left out (llama.cpp reads `token_embd` for both);
- matrices take the chosen type, norms and other 1-D tensors stay f32; for q8_0/q4_0, a matrix whose rows
  are not a multiple of the 32-value block falls back to f16; with q4_0 the output matrix (token_embd when
  tied) is q8_0, as llama.cpp keeps it above 4 bits (its q6_k, which the `gguf` package cannot write);
- the byte-level BPE tokenizer (tokens, types, merges, special ids, add-BOS) and the chat template go into
  the metadata, so a runtime needs nothing beside the file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from tuna.atomic import current_umask
from tuna.errors import UserError
from tuna.models.hub import hub_id, is_hub_id, license_of
from tuna.models.load import base_model_of, load_any

# --quant -> (ggml type of the matrices, llama.cpp's file type)
QUANTS = {"f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"), "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
          "q4_0": ("Q4_0", "MOSTLY_Q4_0")}
ARCHES = {"llama": "LLAMA", "qwen2": "QWEN2"}  # transformers model_type -> gguf.MODEL_ARCH member
# The pre-tokenizers llama.cpp knows by name (`tokenizer.ggml.pre`), told apart by their steps and split regex.
GPT2_SPLIT = "gpt2"  # ByteLevel's own regex
QWEN2_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
               "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
PRE_TOKENIZERS = {(GPT2_SPLIT,): "gpt-2", ("digits", GPT2_SPLIT): "smollm", (QWEN2_SPLIT,): "qwen2",
                  (LLAMA3_SPLIT,): "llama-bpe"}


def export_gguf(spec: str | Path, out: str | Path, quant: str = "f16", *, progress: bool = True) -> dict:
    """Write the model `spec` (a run, checkpoint directory or alias; adapters merged first) to the GGUF file
    `out`, atomically; returns the path, its size in bytes, the quant type, the tensor count and how many
    matrices fell back to f16."""
    import gguf

    out = Path(out)
    if quant not in QUANTS:
        raise UserError(f"unknown GGUF quant type {quant!r}; choose one of {', '.join(QUANTS)}")
    if out.exists():
        raise UserError(f"{out} exists; choose a new file name")
    model, tokenizer = load_any(str(spec))
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    config = model.config
    if config.model_type not in ARCHES:
        raise UserError(f"GGUF export supports {' and '.join(ARCHES)} models; this one is {config.model_type}")
    arch = getattr(gguf.MODEL_ARCH, ARCHES[config.model_type])
    tensors = gguf_tensors(model, arch)
    output = "output.weight" if any(name == "output.weight" for name, _ in tensors) else "token_embd.weight"
    types = [tensor_type(t, "q8_0" if quant == "q4_0" and name == output else quant) for name, t in tensors]

    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[arch])
    for (name, tensor), qtype in zip(tensors, types):
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        writer.add_tensor_info(name, tuple(tensor.shape), np.float32, tensor.numel() // block * size, raw_dtype=qtype)
    write_metadata(writer, str(spec), config, quant)
    write_tokenizer(writer, tokenizer, config.vocab_size)
    write_atomically(writer, out, tensors, types, progress)
    fallbacks = sum(t == gguf.GGMLQuantizationType.F16 for t in types) if quant.startswith("q") else 0
    return {"out": str(out), "bytes": out.stat().st_size, "quant": quant, "tensors": len(tensors),
            "f16_fallbacks": fallbacks}


def write_atomically(writer, out: Path, tensors, types, progress: bool) -> None:
    """Header, metadata, then one tensor at a time (converted as it is written, so one copy is in memory), into
    a hidden sibling that becomes `out` only when complete."""
    import gguf
    from tqdm import tqdm

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{out.name}-", suffix=".partial", dir=out.parent)
    os.close(fd)
    os.chmod(partial, 0o666 & ~current_umask())  # mkstemp makes it 0600; the result should be as any file
    try:
        try:
            writer.write_header_to_file(Path(partial))
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for (_, tensor), qtype in tqdm(list(zip(tensors, types)), desc="GGUF tensors", unit="tensor",
                                           disable=not progress):
                writer.write_tensor_data(gguf.quants.quantize(tensor.detach().float().numpy(), qtype))
        finally:
            writer.close()
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        os.replace(partial, out)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def gguf_tensors(model, arch) -> list[tuple[str, torch.Tensor]]:
    """(llama.cpp name, tensor) in state-dict order, laid out as llama.cpp's converter lays them out."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tensors = []
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reads token_embd as the output matrix too
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"GGUF export: {config.model_type} tensor {key} has no llama.cpp name")
        if arch == gguf.MODEL_ARCH.LLAMA and ".attn_q." in name:
            tensor = rotary_permute(tensor, config.num_attention_heads)
        elif arch == gguf.MODEL_ARCH.LLAMA and ".attn_k." in name:
            tensor = rotary_permute(tensor, config.num_key_value_heads)
        tensors.append((name, tensor))
    rope_freqs = llama3_rope_factors(model)
    if rope_freqs is not None:
        tensors.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", rope_freqs))
    return tensors


def rotary_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """transformers rotates each head's two halves; llama.cpp (as Meta's original) rotates interleaved pairs."""
    halves = weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
    return halves.swapaxes(1, 2).reshape(weight.shape)


def llama3_rope_factors(model) -> torch.Tensor | None:
    """Llama 3's RoPE scaling, which llama.cpp takes as a tensor of per-frequency divisors, not as metadata."""
    params = getattr(model.config, "rope_parameters", None) or {}
    if params.get("rope_type") != "llama3":
        return None
    rotary = next(m for m in model.modules() if hasattr(m, "inv_freq"))
    dim = rotary.inv_freq.numel() * 2
    plain = 1.0 / (params["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    return plain / rotary.inv_freq.float()


def tensor_type(tensor: torch.Tensor, quant: str):
    import gguf

    kind = gguf.GGMLQuantizationType
    if tensor.ndim < 2:
        return kind.F32
    wanted = getattr(kind, QUANTS[quant][0])
    return kind.F16 if tensor.shape[-1] % gguf.GGML_QUANT_SIZES[wanted][0] else wanted


def write_metadata(writer, spec: str, config, quant: str) -> None:
    """Hyperparameters under llama.cpp's keys, and where the model came from."""
    import gguf

    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(rope.get("rope_theta", 10000.0))
    write_rope_scaling(writer, rope)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(getattr(gguf.LlamaFileType, QUANTS[quant][1]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    base = base_model_of(spec)  # None unless `spec` is a run
    origin = hub_id(base or spec)  # the Hub's name, as tuna's adapters and model cards give it
    writer.add_name(Path(spec).name)
    writer.add_basename(Path(origin).name)
    writer.add_size_label(gguf.size_label(*writer.get_total_parameter_count()))
    if base:
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, origin)
        if is_hub_id(origin):
            writer.add_base_model_repo_url(0, f"https://huggingface.co/{origin}")
    license = license_of(base or spec)
    if license:
        writer.add_license(license)


def write_rope_scaling(writer, rope: dict) -> None:
    import gguf

    kind = rope.get("rope_type", "default")
    if kind in ("default", "llama3"):  # llama3's goes in as the rope_freqs tensor
        return
    if kind not in ("linear", "yarn"):
        raise UserError(f"GGUF export: llama.cpp has no {kind} RoPE scaling (it has linear, yarn and llama3)")
    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR if kind == "linear" else gguf.RopeScalingType.YARN)
    writer.add_rope_scaling_factor(rope["factor"])
    if rope.get("original_max_position_embeddings"):
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])


def write_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """A byte-level BPE vocabulary as llama.cpp's `gpt2` tokenizer model, padded to the model's rows."""
    import gguf

    saved = json.loads(tokenizer.backend_tokenizer.to_str())
    decoder = (saved.get("decoder") or {}).get("type")
    if saved["model"]["type"] != "BPE" or decoder != "ByteLevel":
        raise UserError("GGUF export writes byte-level BPE tokenizers (GPT-2 style); this one is "
                        f"{saved['model']['type']} with a {decoder} decoder")
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise UserError(f"the tokenizer has ids up to {max(by_id)} but the model only {vocab_size} embedding rows")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL if i not in added else
                         gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(saved.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in saved["model"]["merges"]])
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    probe = tokenizer("a")["input_ids"]  # what the tokenizer adds by itself, whatever its config says
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and probe[-1] == tokenizer.eos_token_id)
    if isinstance(tokenizer.chat_template, str):
        writer.add_chat_template(tokenizer.chat_template)


def pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name for how the text is split before BPE; a split it does not know would tokenize wrongly."""
    steps = (pre or {}).get("pretokenizers", [pre or {}])
    shape = []
    for step in steps:
        if step.get("type") == "ByteLevel":
            shape += [GPT2_SPLIT] if step.get("use_regex", True) else []
        elif step.get("type") == "Digits" and step.get("individual_digits"):
            shape.append("digits")
        elif step.get("type") == "Split" and "Regex" in step.get("pattern", {}):
            shape.append(step["pattern"]["Regex"])
        else:
            shape.append(json.dumps(step))
    name = PRE_TOKENIZERS.get(tuple(shape))
    if name is None:
        raise UserError("GGUF export: the tokenizer splits text in a way llama.cpp does not know by name "
                        f"(known: {', '.join(PRE_TOKENIZERS.values())})")
    return name
