"""The `bailing` command line: `init-demo` writes demo checkpoints, `generate` completes a prompt.

Flow: argv -> argparse -> one command function -> exit code (0 ok, 2 user error with a one-line
message on stderr). Heavy imports (torch, engine) happen inside the commands so `--help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bailing.commands import MODULES

EXIT_OK = 0
EXIT_USER_ERROR = 2  # bad arguments or input; other codes: see bailing/commands/*


def _cmd_init_demo(args: argparse.Namespace) -> int:
    from bailing.demo.samples import write_demo_samples
    from bailing.demo.writer import write_demo_models

    for name, path in write_demo_models(args.dir).items():
        print(f"{name}: {path}")
    samples = Path(args.dir) / "samples"
    write_demo_samples(samples)  # media to try the ming model with
    print(f"samples: {samples}")
    return EXIT_OK


def _sampling_kwargs(args: argparse.Namespace) -> dict:
    """SamplingParams arguments; options left unset keep the engine's defaults."""
    kwargs = {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "stop": None,
        "ignore_eos": False,
    }
    for name in ("top_p", "top_k", "seed"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    return kwargs


def _cmd_generate(args: argparse.Namespace) -> int:
    from engine import LLM, SamplingParams

    params = SamplingParams(**_sampling_kwargs(args))  # validate before the (slow) model load
    llm = LLM(args.model, device=args.device, dtype=args.dtype)
    start = time.perf_counter()
    out = llm.generate([args.prompt], params)[0]
    elapsed = time.perf_counter() - start
    n_tokens = len(out.token_ids)
    rate = n_tokens / elapsed if elapsed > 0 else 0.0
    if args.json:
        record = {
            "text": out.text,
            "token_ids": list(out.token_ids),
            "finish_reason": out.finish_reason,
            "usage": {"prompt_tokens": len(out.prompt_token_ids), "completion_tokens": n_tokens},
            "tokens_per_s": round(rate, 3),
        }
        print(json.dumps(record, ensure_ascii=False))
    else:
        print(out.text)
    print(f"[{n_tokens} tokens in {elapsed:.2f} s, {rate:.1f} tok/s]", file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `bailing` (one subparser per command)."""
    parser = argparse.ArgumentParser(prog="bailing", description="Bailing Serve: Ling/Ring MoE inference.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = sub.add_parser("init-demo", help="write tiny random-weight demo checkpoints into DIR")
    init.add_argument(
        "dir",
        metavar="DIR",
        help="root folder: DIR/ling, DIR/ring, DIR/llada2, DIR/ming, DIR/ming2 (one per demo model)",
    )
    init.set_defaults(func=_cmd_init_demo)

    gen = sub.add_parser("generate", help="complete a prompt with a local checkpoint")
    gen.add_argument("--model", required=True, metavar="DIR", help="Hugging Face checkpoint folder")
    gen.add_argument("--max-tokens", type=int, default=64, help="new tokens at most (default 64)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold")
    gen.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    gen.add_argument("--seed", type=int, default=None, help="sampling seed")
    gen.add_argument("--device", default="cpu", help="torch device (default cpu)")
    gen.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="compute dtype (default: the engine's choice for the device)",
    )
    gen.add_argument("--json", action="store_true", help="print one JSON object instead of plain text")
    gen.add_argument("prompt", metavar="PROMPT", help="the text to complete")
    gen.set_defaults(func=_cmd_generate)

    for name in MODULES:
        importlib.import_module(name).add_parsers(sub)
    return parser


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Errors shown as `error: message`: ValueError/OSError, plus the engine's errors if it is present."""
    try:
        from engine.errors import BailingError
    except ImportError:
        return (ValueError, OSError)
    return (BailingError, ValueError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `bailing` console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _user_error_types() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
