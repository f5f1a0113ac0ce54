"""The command line: train, generate, chat, eval (loss, metrics, needle), data (synth, select-responses), compare,
export, demo, methods.

Bad input raises `UserError`; `main` prints it as one line and exits 2 (`--debug` shows the traceback).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings

from tuna.errors import UserError

EPILOG = "Config keys are documented in docs/config.md; examples/ has one config per method."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(route_eval_needle(sys.argv[1:] if argv is None else argv))
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    quiet_libraries(args.debug)
    try:
        return args.run(args) or 0
    except UserError as exc:
        if args.debug:
            raise
        print(f"tuna: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ntuna: interrupted", file=sys.stderr)
        return 130


def route_eval_needle(argv: list[str]) -> list[str]:
    """`tuna eval needle ...` runs the `eval-needle` parser: argparse cannot give `eval` both options and sub-commands."""
    command = next((i for i, token in enumerate(argv) if not token.startswith("-")), None)
    if command is not None and argv[command : command + 2] == ["eval", "needle"]:
        return argv[:command] + ["eval-needle"] + argv[command + 2 :]
    return argv


def quiet_libraries(debug: bool) -> None:
    """Library chatter (load progress bars, deprecation notices) hides our own output; --debug keeps it."""
    if debug:
        return
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show full tracebacks and library warnings")
    parser = argparse.ArgumentParser(prog="tuna", description="Fine-tune language models.", epilog=EPILOG,
                                     parents=[common])
    parser.set_defaults(debug=False)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add_command in (add_train_command, add_generate_command, add_chat_command, add_eval_command,
                        add_eval_needle_command, add_data_command, add_export_command, add_merge_command,
                        add_compare_command, add_serve_command, add_config_command,
                        add_demo_command, add_methods_command):
        add_command(sub, common)
    return parser


def add_train_command(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("train", parents=[common], help="fine-tune a model from a YAML config",
                       description="Fine-tune a model. Writes a run directory: config.yaml, metrics.jsonl, "
                                   "checkpoints/, final/ (model or adapter) and summary.json.", epilog=EPILOG)
    p.add_argument("config", nargs="?", help="YAML config; optional with --resume RUN_DIR")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=1e-4 (repeatable)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                   help="continue from the latest checkpoint of the config's output_dir, or of RUN_DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (metrics.jsonl is written anyway)")
    p.add_argument("--allow-data-change", action="store_true",
                   help="with --resume: go on although the data files changed since the checkpoint (a warning is "
                        "kept in the summary and the report)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train as N processes on this machine (torchrun; one per GPU, or CPU processes); see "
                        "docs/distributed.md, also for several machines")
    p.set_defaults(run=cmd_train)


def add_generate_command(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("generate", parents=[common], help="generate a reply to one prompt",
                       description="Generate from a model alias, checkpoint directory, .gguf file or run directory.")
    add_model_arg(p)
    add_proxy_args(p)
    p.add_argument("--prompt", required=True, help="the user message (or raw text with --raw)")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--raw", action="store_true", help="feed the prompt as plain text, without the chat template")
    add_sampling_args(p)
    p.set_defaults(run=cmd_generate)


def add_chat_command(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("chat", parents=[common], help="chat interactively with a model",
                       description="Interactive chat; an empty line or Ctrl-D quits, /reset clears the history.")
    add_model_arg(p)
    p.add_argument("--system", help="system prompt")
    add_sampling_args(p)
    p.set_defaults(run=cmd_chat)


def add_eval_command(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("eval", parents=[common], help="loss/perplexity or generation metrics on a data file; "
                                                      "`tuna eval needle` for needle in a haystack",
                       description="Without --metric: loss and perplexity on a data file, with the same formats and "
                                   "loss masks as training. With --metric: generate an answer per record and score "
                                   "it (LongBench records, prompt/completion or messages), or for mc_accuracy rank "
                                   "each record's choices by log-likelihood. With --harness: EleutherAI's "
                                   "lm-evaluation-harness tasks, offline. Needle in a haystack: "
                                   "tuna eval needle -h. Metrics and formats: docs/evaluation.md.")
    add_model_arg(p)
    add_proxy_args(p)
    p.add_argument("--data", help="JSONL, JSON, Parquet, CSV or datasets directory")
    p.add_argument("--suite", choices=["general"], help="instead of --data: the built-in forgetting probe "
                   "(general-text perplexity and general multiple choice), with the change from --base")
    p.add_argument("--base", help="with --suite: the model to compare with (default: a run directory's base model)")
    p.add_argument("--harness", type=comma_list, metavar="TASK[,TASK...]",
                   help="instead of --data: lm-evaluation-harness tasks, offline: tuna's own (examples/harness: "
                        "tuna_suite, tuna_general, tuna_knowledge_mc, tuna_cloze, tuna_dates, tuna_arithmetic) or "
                        "standard ones whose datasets are in the local Hugging Face cache (mmlu, arc_easy, ...)")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR",
                   help="with --harness: a directory of more task YAMLs (repeatable)")
    p.add_argument("--num-fewshot", type=int, metavar="K", help="with --harness: examples per prompt (default: "
                                                                "the task's)")
    p.add_argument("--limit", type=int, metavar="N", help="with --harness: only the first N examples of each task")
    p.add_argument("--apply-chat-template", action="store_true",
                   help="with --harness: prompts through the model's chat template")
    p.add_argument("--log-samples", action="store_true",
                   help="with --harness: also write each example's prompt, responses and scores")
    p.add_argument("--metric", type=comma_list, metavar="NAME[,NAME...]",
                   help="score generated answers: qa_f1, rouge_l, exact_match, bleu, classification, json_valid; "
                        "rank choices: mc_accuracy, mc_accuracy_norm")
    p.add_argument("--normalize", metavar="STEP[,STEP...]",
                   help="exact_match and qa_f1: lower, punct, articles, whitespace, or none (default: all four, SQuAD)")
    p.add_argument("--format", default="auto", choices=["auto", "text", "instruction", "prompt_completion", "messages"],
                   help="data format for loss/perplexity")
    p.add_argument("--train-on", default="completion", choices=["completion", "all"], help="which tokens are scored")
    p.add_argument("--max-tokens", type=int, default=1024, help="loss/perplexity: truncate longer examples (default 1024)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="with --metric: answer length (default 64)")
    p.add_argument("--stop", action="append", metavar="STR", help="with --metric: end the answer before this string "
                                                                 "(repeatable)")
    p.add_argument("--sample", action="store_true", help="with --metric: sample answers (default greedy)")
    p.add_argument("--temperature", type=float, help="with --sample (default 1.0)")
    p.add_argument("--top-p", type=float, help="with --sample: nucleus sampling (default 1.0, off)")
    p.add_argument("--seed", type=int, default=0, help="with --sample (default 0)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", metavar="DIR", help="with --metric: where to write scores.json and predictions.jsonl "
                                                "(default runs/eval-<time>); with --harness: results.json and "
                                                "summary.json (default RUN/harness or runs/harness-<time>)")
    p.set_defaults(run=cmd_eval)


def add_eval_needle_command(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("eval-needle", parents=[common], prog="tuna eval needle",
                       description="Needle in a haystack: hide facts (a number per needle) at a depth of a long "
                                   "context of Python docstrings and ask for them. Writes DIR/needle.json and a "
                                   "heatmap DIR/needle.png of accuracy by length and depth.")
    add_model_arg(p)
    p.add_argument("--lengths", type=token_lengths, default=token_lengths("1k,2k,4k"), metavar="N[,N...]",
                   help="prompt lengths in tokens; 1k means 1024 (default 1k,2k,4k)")
    p.add_argument("--depths", type=fractions, default=fractions("0,0.25,0.5,0.75,1"), metavar="F[,F...]",
                   help="needle depths, 0 = start of the context, 1 = end (default 0,0.25,0.5,0.75,1)")
    p.add_argument("--needles", type=int, default=1, help="facts per haystack, spread from the depth to the end")
    p.add_argument("--trials", type=int, default=1, help="haystacks per cell, each with fresh needles")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="DIR", help="output directory (default runs/needle-<time>)")
    p.set_defaults(run=cmd_eval_needle)


def add_data_command(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("data", parents=[common], help="generate or curate training data")
    data = p.add_subparsers(title="commands", metavar="COMMAND")
    p = data.add_parser("select-responses", parents=[common], help="keep the candidate response the model finds most "
                        "probable (GRAPE)",
                        description="For each instruction with several candidate responses, keep the one with the "
                                    "highest length-normalised log-likelihood under --model (GRAPE, 'The Best "
                                    "Instruction-Tuning Data are Those That Fit'). Writes SFT-ready records, each with "
                                    "every candidate's mean log-prob per token in `candidate_scores`.")
    p.add_argument("data", metavar="IN", help="records with a prompt (messages, instruction or prompt) and a list of "
                   "candidate responses")
    p.add_argument("--out", required=True, metavar="FILE.jsonl")
    p.add_argument("--model", default="smollm2-135m", help="the model that will be fine-tuned (default smollm2-135m)")
    p.add_argument("--field", default="responses", help="the field holding the candidates (default responses)")
    p.add_argument("--max-tokens", type=int, default=2048, help="longer candidates are scored on their first "
                   "tokens only, and counted (default 2048)")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(run=cmd_select_responses)

    p = data.add_parser("inspect", parents=[common], help="see what training will see: lengths, defects, loss masks",
                        description="Counts, token lengths (with a histogram) and defects (blank answers, exact "
                                    "duplicates, records with no trained token) of DATA, and its first examples "
                                    "rendered token by token with their loss mask, BOS/EOS shown. With --config, "
                                    "everything is rendered as that recipe trains (model, template, data options) "
                                    "and the first training micro-batch is shown as the loss sees it.")
    p.add_argument("data", metavar="DATA", nargs="?", help="data file (default: the recipe's data.path)")
    p.add_argument("--config", metavar="RECIPE", help="a training config: its model, template and data options")
    p.add_argument("--model", default="smollm2-135m", help="without --config: whose tokenizer and template (default "
                   "the embedded model)")
    p.add_argument("--examples", type=int, default=3, metavar="N", help="examples to show (default 3)")
    p.add_argument("--html", metavar="OUT.html", help="also write a self-contained HTML page")
    p.add_argument("--no-color", action="store_true", help="mark trained tokens with « » instead of colour")
    p.set_defaults(run=cmd_inspect)
    p = data.add_parser("convert", parents=[common], help="write records as chat messages or TRL prompt/completion",
                        description="Read records of any format tuna reads (messages, ShareGPT conversations, "
                                    "instruction, prompt/completion, TRL conversational prompt/completion) and write "
                                    "them as chat `messages` or as TRL's conversational prompt/completion (JSONL). "
                                    "Format: docs/data.md.")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--to", required=True, choices=["messages", "prompt_completion"])
    p.add_argument("--out", required=True, metavar="OUT.jsonl")
    p.add_argument("--columns", type=column_map, default=None, metavar="OURS=THEIRS,...",
                   help="the file's column for each of tuna's record keys, e.g. messages=conversation")
    p.set_defaults(run=cmd_convert)
    p = data.add_parser("dedup", parents=[common], help="drop exact and near-duplicate records",
                        description="Keep the first of every group of duplicates: exact duplicates on normalised "
                                    "text, near duplicates by MinHash LSH over character 5-grams (needs datasketch). "
                                    "Writes the kept records to OUT and, beside it, OUT's name with .removed.jsonl: "
                                    "each dropped record with the record it duplicates. Format: docs/data.md.")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--out", required=True, metavar="OUT.jsonl")
    p.add_argument("--near", type=float, default=0.85, metavar="J",
                   help="Jaccard similarity that counts as a near duplicate (default 0.85; 1: exact only)")
    p.set_defaults(run=cmd_dedup)
    p = data.add_parser("decontaminate", parents=[common], help="drop training records that overlap evaluation data",
                        description="Drop every training record that shares a word n-gram (13 by default, as in the "
                                    "GPT-3 and Llama reports) with any record of the evaluation files. Writes the kept "
                                    "records to OUT and, beside it, OUT's name with .removed.jsonl: each dropped "
                                    "record with the evaluation record it overlaps and the n-gram.")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--against", required=True, nargs="+", metavar="EVAL", help="evaluation data files")
    p.add_argument("--out", required=True, metavar="OUT.jsonl")
    p.add_argument("--ngram", type=int, default=13, metavar="N", help="words in an overlapping sequence (default 13)")
    p.set_defaults(run=cmd_decontaminate)
    p = data.add_parser("select", parents=[common], help="keep a budget of records, chosen as the selection papers do",
                        description="Select BUDGET records (a count, or a share like 20%) from DATA with a strategy: "
                                    "random, longest (longest answers), length (a token-length window), ifd "
                                    "(Instruction-Following Difficulty; a small --model is Superfiltering), "
                                    "perplexity, diversity (greedy k-center on hidden states), lobass "
                                    "(learnability after a short fine-tune). Chain them with commas: every one but "
                                    "the last keeps twice the budget. Writes the kept records as they were, in the "
                                    "pool's order. Format: docs/data.md.")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--strategy", required=True, metavar="S[,S...]")
    p.add_argument("--budget", required=True, metavar="N|P%")
    p.add_argument("--out", required=True, metavar="OUT.jsonl")
    p.add_argument("--model", default="smollm2-135m", help="the scorer (and the tokenizer that measures lengths)")
    p.add_argument("--scores-out", metavar="F", help="per-record scores; an existing file for the same data and "
                   "scorer is reused")
    p.add_argument("--order", choices=["low", "high"], default="low", help="perplexity: keep the lowest or highest")
    p.add_argument("--min-tokens", type=int, default=0, help="length: shortest rendered record kept")
    p.add_argument("--max-tokens", type=int, default=None, help="length: longest rendered record kept")
    p.add_argument("--lobass-steps", type=int, default=20, help="lobass: steps of the short fine-tune (default 20)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=cmd_select)
    synth = data.add_parser("synth", parents=[common], help="generate a synthetic data set").add_subparsers(
        title="data sets", metavar="TASK")
    p = synth.add_parser("retrieval", parents=[common], help="key-value retrieval in long lists of dictionaries",
                         description="Synthetic key-value retrieval examples in messages format (Xiong et al. 2024, "
                                     "'From Artificial Needles to Real Haystacks'), sized in tokens of --model.")
    p.add_argument("--out", required=True, metavar="FILE.jsonl")
    p.add_argument("--n", type=int, default=200, help="number of examples (default 200)")
    p.add_argument("--lengths", type=token_lengths, default=token_lengths("1k,2k"), metavar="N[,N...]",
                   help="example lengths in tokens, chat template included; 1k means 1024 (default 1k,2k)")
    p.add_argument("--positions", type=fractions, default=fractions("0,0.25,0.5,0.75,1"), metavar="F[,F...]",
                   help="where the gold dictionary sits in the list, 0 = first, 1 = last (default 0,0.25,0.5,0.75,1)")
    p.add_argument("--model", default="smollm2-135m", help="whose tokenizer and chat template measure the lengths")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_synth_retrieval)


def add_export_command(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("export", parents=[common], help="export a run as a merged checkpoint, or compress it (BitDelta)",
                       description="Merge a run's adapter or sparse delta into its base model and write a plain "
                                   "transformers checkpoint. With --apply-delta, add sparse deltas (from sparse or "
                                   "s2ft runs) to MODEL one after another: deltas compose by addition. With "
                                   "--bitdelta, store a full fine-tune's delta as one sign bit per weight and a "
                                   "distilled scale per matrix (loadable by --model like a run). With --gguf, write "
                                   "one GGUF file for llama.cpp, Ollama and LM Studio (llama and qwen2 models; "
                                   "docs/deploy.md).")
    p.add_argument("run_dir", metavar="RUN", help="a finished run directory (or, with --apply-delta or --gguf, any model)")
    p.add_argument("--merge", metavar="OUT", help="directory to write the merged checkpoint to")
    p.add_argument("--apply-delta", nargs="+", action="extend", default=[], metavar="DELTA",
                   help="sparse delta files or sparse/s2ft run directories to add")
    p.add_argument("--bitdelta", metavar="OUT", help="directory to write the BitDelta compression of a full fine-tune to")
    p.add_argument("--bitdelta-steps", type=int, default=100, metavar="N",
                   help="with --bitdelta: Adam steps distilling the scales on the run's data (default 100)")
    p.add_argument("--gguf", metavar="OUT.gguf", help="GGUF file to write")
    p.add_argument("--quant", choices=("f16", "bf16", "q8_0", "q4_0"),
                   help="with --gguf: type of the weight matrices; norms stay f32 (default f16)")
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the run to this Hugging Face Hub model repository: "
                   "the adapter folder of an adapter run, else the merged checkpoint, with a model card "
                   "(docs/deploy.md)")
    p.add_argument("--dry-run", metavar="DIR", help="with --push-to-hub: write the folder that would be uploaded to "
                   "DIR and upload nothing")
    p.set_defaults(run=cmd_export)


def add_merge_command(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("merge", parents=[common], help="merge fine-tunes of one base (soups, task arithmetic, TIES, "
                       "DARE, SLERP, Model Stock, LiNeS)",
                       description="Merge models as CONFIG.yaml says (mergekit's format: merge_method, base_model, "
                                   "models with parameters, dtype, tokenizer_source; plus tuna's lines, seed and "
                                   "output keys), tensor by tensor, into a plain transformers checkpoint with its "
                                   "tokenizer, chat template and a model card. Inputs may be tuna runs of any "
                                   "kind, checkpoint directories, PEFT adapters or the embedded model. With "
                                   "`output: adapter`, LoRA adapters of one base combine into one adapter. "
                                   "Format: docs/merging.md.")
    p.add_argument("config", metavar="CONFIG.yaml")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write (absent or empty; written atomically)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_merge)


def add_compare_command(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("compare", parents=[common], help="train variants of a recipe at equal budget; compare "
                       "learning, forgetting, memory and speed",
                       description="Train every variant of MATRIX.yaml (a base recipe plus per-variant overrides) "
                                   "at the same budget, one process each, then score the task and the general "
                                   "suite. Writes results.json, summary.md and report.html to the output directory; "
                                   "run it again to resume. Format: docs/compare.md.")
    p.add_argument("matrix", metavar="MATRIX.yaml")
    p.add_argument("--out", metavar="DIR", help="output directory (default: the matrix's output_dir)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs are written anyway)")
    p.set_defaults(run=cmd_compare)


def add_serve_command(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="serve a model and its LoRA adapters over OpenAI's HTTP API",
                       description="Serve MODEL, and any number of LoRA adapters over one copy of it, at "
                                   "/v1/chat/completions, /v1/completions (streamable), /v1/models and /health. "
                                   "A request's `model` picks the base or an adapter; requests are batched "
                                   "continuously, adapters mixed in one batch. See docs/deploy.md.")
    p.add_argument("model", metavar="MODEL", help="alias (smollm2-135m), checkpoint directory, .gguf file, cached hub "
                                                  "id or run directory (a run's adapter is merged into its base)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=RUN",
                   help="serve RUN's LoRA adapter (a tuna run or a PEFT adapter directory) as model NAME (repeatable)")
    p.add_argument("--name", help="the base's model id for clients (default: MODEL as given, or its directory name)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=16, metavar="N", help="requests decoded together (default 16)")
    p.add_argument("--engine", choices=["transformers", "vllm"], default="transformers",
                   help="transformers (default, any machine) or vllm (runs vLLM's server; CUDA and vLLM needed)")
    p.set_defaults(run=cmd_serve)


def add_demo_command(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[common], help="fine-tune the embedded model on a generated task, before/after",
                       description="LoRA-tune the embedded SmolLM2-135M-Instruct on the CPU to rewrite dates as ISO "
                                   "8601; print exact match and general-text perplexity before and after.")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps of 8 examples (default 40)")
    p.add_argument("--output-dir", help="where to write the run (default runs/demo-<time>)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_demo)


def add_config_command(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("config", parents=[common], help="show every config key with its value and meaning")
    show = p.add_subparsers(title="commands", metavar="COMMAND", required=True).add_parser(
        "show", parents=[common], help="every key of a recipe (or the defaults), its meaning, and its default",
        description="Print every config key of RECIPE (or of the defaults) with its value and what it means; keys "
                    "the recipe changes name their default. Keys other tools use (transformers, TRL, Axolotl: "
                    "learning_rate, gradient_accumulation_steps, lora_r, ...) are read as tuna's, with a note.")
    show.add_argument("recipe", nargs="?", metavar="RECIPE")
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    show.set_defaults(run=cmd_config_show)


def add_methods_command(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("methods", parents=[common], help="list the fine-tuning methods and their knobs")
    p.set_defaults(run=cmd_methods)


def comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def column_map(text: str) -> dict[str, str]:
    """'messages=conv,output=answer' -> {'messages': 'conv', 'output': 'answer'}."""
    pairs = [part.split("=", 1) for part in comma_list(text)]
    if not pairs or any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of OURS=THEIRS column names")
    return {ours.strip(): theirs.strip() for ours, theirs in pairs}


def token_lengths(text: str) -> list[int]:
    """'1k,2k,512' -> [1024, 2048, 512]."""
    try:
        values = [round(float(p[:-1]) * 1024) if p.lower().endswith("k") else int(p) for p in comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of token counts like 1k,2k,512") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: token counts must be positive")
    return values


def fractions(text: str) -> list[float]:
    try:
        values = [float(p) for p in comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers like 0,0.5,1") from None
    if not values or not all(0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be a fraction in [0, 1]")
    return values


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m",
                   help="alias (smollm2-135m), checkpoint directory, .gguf file, cached hub id or run directory")


def add_proxy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--proxy", metavar="EXPERT", help="proxy-tuning: a small tuned model whose shift steers --model")
    p.add_argument("--anti", metavar="BASE", help="proxy-tuning: the expert's untuned version; next-token logits are "
                                                  "model + (proxy - anti), over one shared vocabulary")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy (default)")


def cmd_train(args) -> int:
    from pathlib import Path

    from tuna import rundir
    from tuna.config import load_recipe
    from tuna.train import distributed
    from tuna.train.loop import train

    if args.nproc < 1:
        raise UserError("--nproc needs at least 1 process")
    if args.nproc > 1 and distributed.world_size() > 1:
        raise UserError("--nproc starts torchrun itself; under torchrun leave it out")
    argv = train_argv(args)  # before the overrides below change args
    config = args.config
    if isinstance(args.resume, str):
        if config is None:
            config = Path(args.resume) / rundir.CONFIG
        args.overrides.append(f"output_dir={args.resume}")
    if config is None:
        raise UserError("tuna train needs a CONFIG file (or --resume RUN_DIR)")
    recipe = load_recipe(config, args.overrides)  # a bad config is refused here, before any process starts
    if args.nproc > 1:
        return distributed.launch(args.nproc, argv)
    result = train(recipe, resume=args.resume is not None, progress=not args.no_progress,
                   allow_data_change=args.allow_data_change)
    if result.interrupted:
        return 130
    if not distributed.is_main_process():
        return 0
    ppl = f" (ppl {result.eval_ppl:.2f})" if result.eval_ppl is not None else ""
    ev = f", eval loss {result.eval_loss:.4f}{ppl}" if result.eval_loss is not None else ""
    loss = f"final train loss {result.train_loss:.4f}" if result.train_loss is not None else "no step logged"
    print(f"done: {result.steps} steps, {result.tokens:,} tokens in {result.seconds:.1f} s, "
          f"{loss}{ev}; peak memory {result.peak_memory_mb:,.0f} MB")
    print(f"run directory: {result.run_dir}")
    return 0


def train_argv(args) -> list[str]:
    """The `tuna train` arguments that `args` was parsed from, less --nproc: what each process runs."""
    argv = ["train", *([args.config] if args.config else []), *(x for o in args.overrides for x in ("--set", o))]
    if args.resume is not None:
        argv += ["--resume"] if args.resume is True else ["--resume", args.resume]
    return (argv + ["--no-progress"] * args.no_progress + ["--allow-data-change"] * args.allow_data_change
            + ["--debug"] * args.debug)


def _load(spec: str):
    from tuna.models.load import load_any

    return load_any(spec)


def _load_steered(args):
    """--model, proxy-tuned by --proxy EXPERT and --anti BASE when they are given."""
    if (args.proxy is None) != (args.anti is None):
        raise UserError("proxy-tuning needs both --proxy EXPERT and --anti BASE (the expert's untuned version)")
    model, tokenizer = _load(args.model)
    if args.proxy is None:
        return model, tokenizer
    from tuna.models.proxy import ProxyTuned, check_same_tokenizer

    (expert, expert_tokenizer), (anti, anti_tokenizer) = _load(args.proxy), _load(args.anti)
    check_same_tokenizer(tokenizer, expert_tokenizer, anti_tokenizer)
    return ProxyTuned(model, expert, anti), tokenizer


def _generate(model, tokenizer, prompt, args) -> str:
    from tuna.eval.generate import generate

    return generate(model, tokenizer, [prompt], max_new_tokens=args.max_new_tokens,
                    sample=args.temperature > 0, temperature=args.temperature or 1.0)[0]


def cmd_generate(args) -> int:
    model, tokenizer = _load_steered(args)
    if args.raw:
        prompt = args.prompt
    else:
        prompt = ([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user", "content": args.prompt}]
    print(_generate(model, tokenizer, prompt, args))
    return 0


def cmd_chat(args) -> int:
    model, tokenizer = _load(args.model)
    start = [{"role": "system", "content": args.system}] if args.system else []
    history = list(start)
    print("tuna chat: empty line or Ctrl-D to quit, /reset to clear the history", file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            return 0
        if line == "/reset":
            history = list(start)
            continue
        history.append({"role": "user", "content": line})
        reply = _generate(model, tokenizer, history, args)
        history.append({"role": "assistant", "content": reply})
        print(f"model> {reply}")


def cmd_eval(args) -> int:
    from tuna.data.read import read_records
    from tuna.data.render import render_records
    from tuna.data.scoring import heldout_loss

    if sum(source is not None for source in (args.data, args.suite, args.harness)) != 1:
        raise UserError("tuna eval needs either --data FILE or --suite general or --harness TASK")
    if args.suite:
        return eval_suite(args)
    if args.harness is not None:
        return eval_harness(args)
    records = read_records(args.data)
    if args.metric is not None:
        return eval_metrics(args, records)
    model, tokenizer = _load_steered(args)
    items, stats = render_records(records, args.format, tokenizer, train_on=args.train_on,
                                  max_tokens=args.max_tokens, overflow="truncate")
    result = heldout_loss(model, items, batch_size=args.batch_size, pad_id=tokenizer.pad_token_id,
                          device=next(model.parameters()).device)
    print(json.dumps({"loss": result["loss"], "ppl": result["ppl"], "tokens": result["tokens"],
                      "examples": stats.kept, "data": stats.summary()}, indent=1))
    return 0


def eval_suite(args) -> int:
    """The general suite on --model and on its base, and how far the model moved (forgetting)."""
    from tuna.eval.general import forgetting, general_suite
    from tuna.models.load import base_model_of

    base = args.base or base_model_of(args.model)
    result = {"model": args.model, "scores": general_suite(*_load(args.model), batch_size=args.batch_size)}
    if base is not None:
        result.update(base=base, base_scores=general_suite(*_load(base), batch_size=args.batch_size))
        result["change"] = forgetting(result["base_scores"], result["scores"])
    else:
        print("tuna: --model is not a run directory: give --base to see the change from a base model", file=sys.stderr)
    print(json.dumps(result, indent=1))
    return 0


def eval_harness(args) -> int:
    """lm-evaluation-harness tasks on --model; a run directory's results go to RUN/harness."""
    from pathlib import Path

    from tuna import rundir
    from tuna.eval.harness import check_request, format_table, run_harness, write_results

    if args.proxy is not None or args.anti is not None:
        raise UserError("--harness evaluates one model; proxy-tuning (--proxy, --anti) is for generation and --data")
    request = check_request(args.harness, args.include_path, limit=args.limit, num_fewshot=args.num_fewshot)
    model, tokenizer = _load(args.model)
    results = run_harness(request, model, tokenizer, num_fewshot=args.num_fewshot, limit=args.limit,
                          apply_chat_template=args.apply_chat_template, log_samples=args.log_samples,
                          batch_size=args.batch_size)
    run = Path(args.model).expanduser()
    out = write_results(args.out or (run / "harness" if rundir.is_run_dir(run) else default_out("harness")), results)
    print(format_table(results))
    print(f"results written to {out} (results.json, summary.json)", file=sys.stderr)
    return 0


def eval_metrics(args, records: list[dict]) -> int:
    from tuna.eval.scorers import NORMALIZE_STEPS, NORMALIZED, get_metrics, parse_normalization
    from tuna.eval.task import check_supported, evaluate_task, read_task, write_task_results

    normalize = NORMALIZE_STEPS if args.normalize is None else parse_normalization(args.normalize)
    metrics = get_metrics(args.metric, normalize)
    generation = generation_options(args)
    items = read_task(records)
    check_supported(items, metrics)
    model, tokenizer = _load_steered(args)
    summary, rows = evaluate_task(model, tokenizer, items, metrics, max_new_tokens=args.max_new_tokens,
                                  batch_size=args.batch_size, generation=generation)
    summary = {**summary, "model": args.model, "data": args.data}
    if any(m.kind == "generate" for m in metrics):
        summary.update(max_new_tokens=args.max_new_tokens, **generation)
    if any(m.name in NORMALIZED for m in metrics):
        summary["normalize"] = list(normalize)
    out = write_task_results(args.out or default_out("eval"), summary, rows)
    print(json.dumps(summary, indent=1))
    print(f"scores and predictions written to {out}", file=sys.stderr)
    return 0


def generation_options(args) -> dict:
    """`tuna eval --metric` decoding: greedy, or sampled with a temperature, top-p and seed; stop strings."""
    if not args.sample and (args.temperature is not None or args.top_p is not None):
        raise UserError("--temperature and --top-p apply only with --sample")
    if args.stop and not all(args.stop):
        raise UserError("--stop needs a non-empty string")
    options = {"sample": args.sample, "stop": args.stop or []}
    if args.sample:
        temperature = 1.0 if args.temperature is None else args.temperature
        top_p = 1.0 if args.top_p is None else args.top_p
        if temperature <= 0 or not 0 < top_p <= 1:
            raise UserError("--temperature must be above 0 and --top-p in (0, 1]")
        options.update(temperature=temperature, top_p=top_p, seed=args.seed)
    return options


def cmd_eval_needle(args) -> int:
    import time

    from tuna.eval.needle import check_lengths, format_grid, model_answerer, run_grid, write_results
    from tuna.models.rope import context_window

    if args.needles < 1 or args.trials < 1:
        raise UserError("--needles and --trials must be at least 1")
    started = time.perf_counter()
    model, tokenizer = _load(args.model)
    check_lengths(args.lengths, context_window(model), args.needles)
    result = run_grid(tokenizer, model_answerer(model, tokenizer), args.lengths, args.depths, needles=args.needles,
                      trials=args.trials, seed=args.seed)
    result["settings"] = {"model": args.model, **result["settings"], "seconds": round(time.perf_counter() - started, 1)}
    out = write_results(result, args.out or default_out("needle"))
    print(format_grid(result))
    print(f"{result['settings']['seconds']:.0f} s; written to {out / 'needle.json'} and {out / 'needle.png'}")
    return 0


def cmd_synth_retrieval(args) -> int:
    from pathlib import Path

    from tuna.data.retrieval import retrieval_examples
    from tuna.models.load import load_tokenizer, resolve

    if args.n < 1:
        raise UserError("--n must be at least 1")
    tokenizer = load_tokenizer(resolve(args.model))
    rows = retrieval_examples(tokenizer, args.n, args.lengths, args.positions, seed=args.seed, progress=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    mean = sum(r["tokens"] for r in rows) / len(rows)
    print(f"wrote {len(rows)} examples to {out} (mean {mean:.0f} tokens; lengths {args.lengths}, "
          f"positions {args.positions})")
    return 0


def cmd_select_responses(args) -> int:
    from pathlib import Path

    from tuna.atomic import atomic_write_jsonl
    from tuna.data.read import read_records
    from tuna.data.select_responses import select_responses

    if args.max_tokens < 2 or args.batch_size < 1:
        raise UserError("--max-tokens must be at least 2 and --batch-size at least 1")
    records = read_records(args.data)
    model, tokenizer = _load(args.model)
    rows, summary = select_responses(model, tokenizer, records, field=args.field, max_tokens=args.max_tokens,
                                     batch_size=args.batch_size)
    atomic_write_jsonl(Path(args.out), rows)
    print(json.dumps({**summary, "model": args.model, "out": args.out}, indent=1))
    return 0


def cmd_inspect(args) -> int:
    from pathlib import Path

    from tuna.config import DataConfig, load_recipe
    from tuna.data.inspect import inspect_records, terminal_report
    from tuna.data.read import read_records
    from tuna.models.load import load_tokenizer, resolve

    recipe = load_recipe(args.config) if args.config else None
    data_cfg = recipe.data if recipe else DataConfig()
    path = args.data or data_cfg.path
    if path is None:
        raise UserError("give a data file, or --config with data.path")
    if args.examples < 0:
        raise UserError("--examples must be 0 or more")
    tokenizer = load_tokenizer(resolve(recipe.model.name if recipe else args.model))
    found = inspect_records(read_records(path, data_cfg.columns), str(path), data_cfg, tokenizer,
                            count=args.examples, recipe=recipe)
    print(terminal_report(found, colour=not args.no_color and sys.stdout.isatty()))
    if args.html:
        from tuna.report.data_report import write_data_report

        print(f"report: {write_data_report(found, Path(args.html))}")
    return 0


def cmd_convert(args) -> int:
    from pathlib import Path

    from tuna.atomic import atomic_write_jsonl
    from tuna.data.convert import convert
    from tuna.data.read import read_records

    rows = convert(read_records(args.data, args.columns), args.to)
    atomic_write_jsonl(Path(args.out), rows)
    print(f"{len(rows)} records written to {args.out} as {args.to}")
    return 0


def write_curated(records, kept: list[int], removed: list[dict], out: str) -> str:
    """The kept records to `out`, the removed ones (each with why) beside it; returns the removed file's path."""
    from pathlib import Path

    from tuna.atomic import atomic_write_jsonl

    out_path = Path(out)
    removed_path = out_path.with_name(out_path.name.removesuffix(".jsonl") + ".removed.jsonl")
    origin = records.origins.__getitem__  # indices are written as the file and line they came from
    rows = [{"origin": origin(e["index"]), **{k: origin(v) if k == "duplicate_of" else v for k, v in e.items()
                                               if k != "index"}, "record": records[e["index"]]} for e in removed]
    atomic_write_jsonl(removed_path, rows)
    atomic_write_jsonl(out_path, (records[i] for i in kept))
    return str(removed_path)


def cmd_select(args) -> int:
    from tuna.selection.run import select_records

    if args.batch_size < 1 or args.lobass_steps < 1:
        raise UserError("--batch-size and --lobass-steps must be at least 1")
    done = select_records(args.data, args.strategy, args.budget, args.out, model=args.model,
                          scores_out=args.scores_out, seed=args.seed, batch_size=args.batch_size,
                          progress=not args.no_progress, order=args.order, length_min=args.min_tokens,
                          length_max=args.max_tokens, lobass_steps=args.lobass_steps)
    print(f"{done['kept']} of {done['pool']} records kept in {args.out} ({done['strategy']}, budget "
          f"{done['budget']})" + "".join(f"; {note}" for note in done["notes"]))
    return 0


def cmd_dedup(args) -> int:
    from tuna.data.dedup import deduplicate
    from tuna.data.read import read_raw

    if not 0 < args.near <= 1:
        raise UserError("--near must be a similarity in (0, 1]")
    records = read_raw(args.data)
    kept, removed = deduplicate(records, args.near)
    where = write_curated(records, kept, removed, args.out)
    exact = sum(r["kind"] == "exact" for r in removed)
    print(f"{len(kept)} of {len(records)} records kept in {args.out}; {exact} exact and {len(removed) - exact} near "
          f"duplicates removed (listed in {where})")
    return 0


def cmd_decontaminate(args) -> int:
    from tuna.data.decontaminate import contaminated
    from tuna.data.read import read_raw

    records = read_raw(args.data)
    evals = [read_raw(path) for path in args.against]
    empty = next((path for path, e in zip(args.against, evals) if not e), None)
    if empty is not None:
        raise UserError(f"evaluation file {empty} is empty")
    kept, dropped, unchecked = contaminated(records, evals, args.ngram)
    where = write_curated(records, kept, dropped, args.out)
    print(f"{len(kept)} of {len(records)} records kept in {args.out}; {len(dropped)} share a {args.ngram}-word "
          f"sequence with the evaluation data (listed in {where})"
          + (f"; {unchecked} evaluation records were too short to check" if unchecked else ""))
    return 0


def default_out(kind: str) -> str:
    import time

    return f"runs/{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_export(args) -> int:
    from tuna.export import export_bitdelta, export_merged

    if args.push_to_hub is not None or args.dry_run is not None:
        return push_run(args)
    if sum(out is not None for out in (args.merge, args.bitdelta, args.gguf)) != 1:
        raise UserError("tuna export needs one of --merge OUT or --bitdelta OUT or --gguf OUT.gguf")
    if args.quant is not None and args.gguf is None:
        raise UserError("--quant goes with --gguf")
    if args.gguf is not None:
        return gguf_run(args)
    if args.bitdelta is not None:
        if args.apply_delta:
            raise UserError("--apply-delta goes with --merge, not --bitdelta")
        if args.bitdelta_steps < 0:
            raise UserError("--bitdelta-steps must be 0 or more")
        done = export_bitdelta(args.run_dir, args.bitdelta, steps=args.bitdelta_steps)
        print(f"BitDelta written to {done['out']}: {done['bytes']:,} bytes for {done['matrices']} matrices as signs "
              f"(+ {done['exact_tensors']} small tensors exact), against {done['full_bytes']:,} bytes of the full "
              f"model ({done['full_bytes'] / done['bytes']:.1f}x smaller); logit MSE to the fine-tune "
              f"{done['distillation_mse_before']:.4g} -> {done['distillation_mse_after']:.4g} after "
              f"{done['steps']} distillation steps")
        return 0
    print(f"merged checkpoint written to {export_merged(args.run_dir, args.merge, args.apply_delta)}")
    return 0


def gguf_run(args) -> int:
    """`tuna export RUN --gguf OUT.gguf [--quant Q]`."""
    from tuna.gguf_export import export_gguf

    if args.apply_delta:
        raise UserError("--apply-delta goes with --merge, not --gguf")
    done = export_gguf(args.run_dir, args.gguf, args.quant or "f16")
    fallbacks = f" ({done['f16_fallbacks']} of them f16: rows not a multiple of 32)" if done["f16_fallbacks"] else ""
    print(f"GGUF written to {done['out']}: {done['bytes'] / 1e6:.1f} MB, {done['quant']}, {done['tensors']} "
          f"tensors{fallbacks}")
    return 0


def push_run(args) -> int:
    """`tuna export RUN --push-to-hub REPO [--dry-run DIR]`."""
    from tuna.export import push_to_hub, stage

    if args.push_to_hub is None:
        raise UserError("--dry-run goes with --push-to-hub REPO")
    if args.merge or args.bitdelta or args.gguf or args.apply_delta:
        raise UserError("--push-to-hub uploads a finished run as it is; leave out --merge, --bitdelta, --gguf and "
                        "--apply-delta")
    if args.dry_run is not None:
        folder = stage(args.run_dir, args.dry_run, args.push_to_hub)
        print(f"dry run: {folder} holds what would be uploaded to {args.push_to_hub}: "
              f"{', '.join(sorted(f.name for f in folder.iterdir()))}")
        return 0
    print(f"uploaded to {push_to_hub(args.run_dir, args.push_to_hub)}")
    return 0


def cmd_merge(args) -> int:
    from tuna.merge.run import merge_models

    print(f"merged model written to {merge_models(args.config, args.out, progress=not args.no_progress)}")
    return 0


def cmd_serve(args) -> int:
    from tuna.serve.run import parse_adapters, serve, served_name

    if args.max_batch < 1:
        raise UserError("--max-batch needs at least 1")
    if args.engine == "vllm":
        from tuna.serve.vllm import serve_with_vllm, vllm_command

        name = args.name or served_name(args.model)
        command = vllm_command(args.model, parse_adapters(args.adapter, name), host=args.host, port=args.port,
                               name=name, max_batch=args.max_batch)
        return serve_with_vllm(command)
    serve(args.model, args.adapter, host=args.host, port=args.port, max_batch=args.max_batch, name=args.name)
    return 0


def cmd_compare(args) -> int:
    from pathlib import Path

    from tuna.compare import run_compare

    results = run_compare(args.matrix, output_dir=args.out, progress=not args.no_progress)
    out = Path(results["output_dir"])
    print((out / "summary.md").read_text())
    print(f"report: {out / 'report.html'}")
    failed = [name for name, entry in results["variants"].items() if entry["status"] != "done"]
    return 1 if failed else 0


def cmd_demo(args) -> int:
    from tuna.demo import run_demo

    run_demo(output_dir=args.output_dir, steps=args.steps, seed=args.seed)
    return 0


def knob_names(sections: dict) -> str:
    """`section.key` for every knob of the given sections, the method's own (last-declared) section first."""
    ordered = list(sections.items())[::-1]
    return ", ".join(f"{key}.{field}" for key, model in ordered for field in model.model_fields)


def cmd_config_show(args) -> int:
    from tuna.config import config_lines, load_recipe

    print("\n".join(config_lines(load_recipe(args.recipe, args.set))))
    return 0


def cmd_methods(args) -> int:
    from tuna.methods import ANY_METHOD_KNOBS, REGISTRY

    for m in REGISTRY.values():
        print(f"{m.name:13} {m.summary}\n{'':13} knobs: {knob_names(m.sections) or '-'}; default lr "
              f"{m.default_lr:g}; paper: {m.paper}")
    from tuna.objectives import REGISTRY as OBJECTIVES

    print("\nobjectives (objective: NAME):")
    for o in OBJECTIVES.values():
        knobs = f"; knobs: {knob_names({o.name: o.knobs})}" if o.knobs else ""
        print(f"  {o.name:13} {o.summary}{knobs}; paper: {o.paper}")
    print("\nwith any method:")
    for key, summary, paper in ANY_METHOD_KNOBS:
        print(f"  {key:25} {summary}; paper: {paper}")
    return 0
