"""The command line: train, generate, chat, eval, export, demo, methods.

Bad input raises `UserError`; `main` prints it as one line and exits 2 (`--debug` shows the traceback).
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

from tuna.errors import UserError

EPILOG = "Config keys are documented in docs/config.md; examples/ has one config per method."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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


def quiet_libraries(debug: bool) -> None:
    """Library chatter (load progress bars, deprecation notices) hides our own output; --debug keeps it."""
    if debug:
        return
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show full tracebacks and library warnings")
    parser = argparse.ArgumentParser(prog="tuna", description="Fine-tune language models.", epilog=EPILOG,
                                     parents=[common])
    parser.set_defaults(debug=False)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser("train", parents=[common], help="fine-tune a model from a YAML config",
                       description="Fine-tune a model. Writes a run directory: config.yaml, metrics.jsonl, "
                                   "checkpoints/, final/ (model or adapter) and summary.json.", epilog=EPILOG)
    p.add_argument("config", nargs="?", help="YAML config; optional with --resume RUN_DIR")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=1e-4 (repeatable)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                   help="continue from the latest checkpoint of the config's output_dir, or of RUN_DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (metrics.jsonl is written anyway)")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("generate", parents=[common], help="generate a reply to one prompt",
                       description="Generate from a model alias, checkpoint directory, .gguf file or run directory.")
    add_model_arg(p)
    p.add_argument("--prompt", required=True, help="the user message (or raw text with --raw)")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--raw", action="store_true", help="feed the prompt as plain text, without the chat template")
    add_sampling_args(p)
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("chat", parents=[common], help="chat interactively with a model",
                       description="Interactive chat; an empty line or Ctrl-D quits, /reset clears the history.")
    add_model_arg(p)
    p.add_argument("--system", help="system prompt")
    add_sampling_args(p)
    p.set_defaults(run=cmd_chat)

    p = sub.add_parser("eval", parents=[common], help="held-out loss and perplexity of a model on a data file",
                       description="Loss and perplexity on a data file, with the same formats and loss masks as training.")
    add_model_arg(p)
    p.add_argument("--data", required=True, help="JSONL, JSON, Parquet, CSV or datasets directory")
    p.add_argument("--format", default="auto", choices=["auto", "text", "instruction", "prompt_completion", "messages"])
    p.add_argument("--train-on", default="completion", choices=["completion", "all"], help="which tokens are scored")
    p.add_argument("--max-tokens", type=int, default=1024, help="truncate longer examples (default 1024)")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser("export", parents=[common], help="export a run as a merged transformers checkpoint",
                       description="Merge a run's adapter or sparse delta into its base model and write a plain "
                                   "transformers checkpoint. With --apply-delta, add sparse deltas (from sparse or "
                                   "s2ft runs) to MODEL one after another: deltas compose by addition.")
    p.add_argument("run_dir", metavar="RUN", help="a finished run directory (or, with --apply-delta, any model)")
    p.add_argument("--merge", required=True, metavar="OUT", help="directory to write the merged checkpoint to")
    p.add_argument("--apply-delta", nargs="+", action="extend", default=[], metavar="DELTA",
                   help="sparse delta files or sparse/s2ft run directories to add")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("demo", parents=[common], help="fine-tune the embedded model on a generated task, before/after",
                       description="LoRA-tune the embedded SmolLM2-135M-Instruct on the CPU to rewrite dates as ISO "
                                   "8601; print exact match and general-text perplexity before and after.")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps of 8 examples (default 40)")
    p.add_argument("--output-dir", help="where to write the run (default runs/demo-<time>)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("methods", parents=[common], help="list the fine-tuning methods and their knobs")
    p.set_defaults(run=cmd_methods)
    return parser


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m",
                   help="alias (smollm2-135m), checkpoint directory, .gguf file, cached hub id or run directory")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy (default)")


def cmd_train(args) -> int:
    from pathlib import Path

    from tuna import rundir
    from tuna.config import load_recipe
    from tuna.train.loop import train

    config = args.config
    if isinstance(args.resume, str):
        if config is None:
            config = Path(args.resume) / rundir.CONFIG
        args.overrides.append(f"output_dir={args.resume}")
    if config is None:
        raise UserError("tuna train needs a CONFIG file (or --resume RUN_DIR)")
    recipe = load_recipe(config, args.overrides)
    result = train(recipe, resume=args.resume is not None, progress=not args.no_progress)
    if result.interrupted:
        return 130
    ev = f", eval loss {result.eval_loss:.4f} (ppl {result.eval_ppl:.2f})" if result.eval_loss is not None else ""
    print(f"done: {result.steps} steps, {result.tokens:,} tokens in {result.seconds:.1f} s, "
          f"final train loss {result.train_loss:.4f}{ev}; peak memory {result.peak_memory_mb:,.0f} MB")
    print(f"run directory: {result.run_dir}")
    return 0


def _load(spec: str):
    from tuna.models.load import load_any

    return load_any(spec)


def _generate(model, tokenizer, prompt, args) -> str:
    from tuna.eval.generate import generate

    return generate(model, tokenizer, [prompt], max_new_tokens=args.max_new_tokens,
                    sample=args.temperature > 0, temperature=args.temperature or 1.0)[0]


def cmd_generate(args) -> int:
    model, tokenizer = _load(args.model)
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
    from tuna.eval.perplexity import heldout_loss

    records = read_records(args.data)
    model, tokenizer = _load(args.model)
    items, stats = render_records(records, args.format, tokenizer, train_on=args.train_on,
                                  max_tokens=args.max_tokens, overflow="truncate")
    result = heldout_loss(model, items, batch_size=args.batch_size, pad_id=tokenizer.pad_token_id,
                          device=next(model.parameters()).device)
    print(json.dumps({"loss": result["loss"], "ppl": result["ppl"], "tokens": result["tokens"],
                      "examples": stats.kept, "data": stats.summary()}, indent=1))
    return 0


def cmd_export(args) -> int:
    from tuna.export import export_merged

    print(f"merged checkpoint written to {export_merged(args.run_dir, args.merge, args.apply_delta)}")
    return 0


def cmd_demo(args) -> int:
    from tuna.demo import run_demo

    run_demo(output_dir=args.output_dir, steps=args.steps, seed=args.seed)
    return 0


def cmd_methods(args) -> int:
    from tuna.methods import ANY_METHOD_KNOBS, REGISTRY

    for m in REGISTRY.values():
        print(f"{m.name:11} {m.summary}\n{'':11} knobs: {m.knobs}; default lr {m.default_lr:g}; paper: {m.paper}")
    print("\nwith any method:")
    for key, summary, paper in ANY_METHOD_KNOBS:
        print(f"  {key:25} {summary}; paper: {paper}")
    return 0
