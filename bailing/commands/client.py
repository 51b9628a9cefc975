"""`bailing chat` and `transcribe`: talk to a running gateway (`models`, `healthcheck`: commands/health.py).

Flow: argv -> `bailing.client.Client` (address from --address or BAILING_GATEWAY, token from
BAILING_API_TOKEN, TLS files from --tls-ca/--tls-cert/--tls-key or BAILING_TLS_CA/_CERT/_KEY) ->
stdout. Exit codes: 0 ok, 1 server error or unhealthy, 2 bad usage (also a request the server rejects
as INVALID_ARGUMENT), 3 cannot connect, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from typing import Any

from bailing.commands import structured_options as structured
from pipelines.protocol import MAX_SAMPLES

EXIT_OK = 0
EXIT_SERVER_ERROR = 1
EXIT_USAGE = 2
EXIT_CONNECT = 3
EXIT_INTERRUPTED = 130
DEFAULT_CONNECT_TIMEOUT_S = 10.0
_DIM, _RESET = "\x1b[2m", "\x1b[0m"
# Off a terminal (no dimming to tell them apart) a reasoning model's two parts come under these lines.
REASONING_LABEL, ANSWER_LABEL = "[reasoning]", "[answer]"


def _exit_code(exc: Exception) -> int:
    from bailing.client import BailingConnectionError

    if isinstance(exc, BailingConnectionError):
        return EXIT_CONNECT
    return EXIT_USAGE if getattr(exc, "code", "") == "INVALID_ARGUMENT" else EXIT_SERVER_ERROR


def _connect(args: argparse.Namespace) -> Any:
    """A `Client` for --address that is already connected (raises BailingConnectionError otherwise)."""
    from bailing.client import Client
    from bailing.settings import read_environment

    env = read_environment()
    client = Client(
        args.address or env.gateway_address,
        token=env.api_token,
        timeout=args.timeout,
        tls_ca=args.tls_ca or env.tls_ca,
        tls_cert=args.tls_cert or env.tls_cert,
        tls_key=args.tls_key or env.tls_key,
    )
    try:
        client.wait_ready(args.timeout or DEFAULT_CONNECT_TIMEOUT_S)
    except BaseException:
        client.close()
        raise
    return client


def _run(command: Any, args: argparse.Namespace, exit_code: Any = None) -> int:
    """Run `command(client, args)`, mapping client errors to exit codes (`exit_code(error)`, default
    `_exit_code`) with a one-line message."""
    from bailing.client import BailingClientError

    try:
        with _connect(args) as client:
            return command(client, args)
    except BailingClientError as exc:
        print(f"error: {exc.code}: {exc.details}", file=sys.stderr)
        return (exit_code or _exit_code)(exc)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


# ---- chat ------------------------------------------------------------------------------------
def _messages(args: argparse.Namespace) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "text", "text": args.text}]
    for kind in ("image", "audio", "video"):
        content += [{"type": kind, "path": path} for path in getattr(args, kind) or ()]
    messages = [{"role": "system", "content": args.system}] if args.system else []
    return [*messages, {"role": "user", "content": content}]


_DIFFUSION_FLAGS = ("block_length", "steps", "threshold", "decoder", "low_threshold")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    names = ("max_tokens", "temperature", "top_p", "top_k", "seed", "n", "enable_thinking", "thinking_budget")
    options = {name: getattr(args, name) for name in names}
    diffusion = {name: getattr(args, name) for name in _DIFFUSION_FLAGS if getattr(args, name) is not None}
    if diffusion:
        options["diffusion"] = diffusion
    return {**options, **structured.chat_options(args)}


def _write(text: str, *, dim: bool = False) -> None:
    if text:
        sys.stdout.write(f"{_DIM}{text}{_RESET}" if dim else text)
        sys.stdout.flush()


def _stats(request_id: str, usage: Any, finish_reason: str) -> None:
    tokens = usage.completion_tokens if usage else 0
    forwards = (
        f", {tokens / usage.forwards:.1f} tokens/forward" if usage and 0 < usage.forwards < tokens else ""
    )
    print(f"[{request_id}: {tokens} tokens{forwards}, {finish_reason or 'unfinished'}]", file=sys.stderr)


def _chat_stream(client: Any, args: argparse.Namespace, tty: bool) -> int:
    last, calls = None, []
    in_reasoning = trim = shown = False  # trim: drop the newlines a reasoning model puts before its answer
    with client.stream(args.model, messages=_messages(args), **_options(args)) as stream:
        for chunk in stream:
            if chunk.reasoning_text:
                trim = True
                if not args.hide_reasoning:
                    if not (tty or in_reasoning):
                        _write(REASONING_LABEL + "\n")
                    _write(chunk.reasoning_text, dim=tty)
                    in_reasoning = shown = True
            text = chunk.text.lstrip("\n") if trim else chunk.text
            if text:
                if in_reasoning:
                    _write("\n" if tty else f"\n{ANSWER_LABEL}\n")
                in_reasoning = trim = False
                _write(text)
                shown = True
            calls += chunk.tool_calls
            last = chunk
    _write("\n" if shown or not calls else "")  # tool calls only: no blank line before them
    structured.print_tool_calls(calls)
    if last is not None:
        _stats(last.request_id, last.usage, last.finish_reason)
    return EXIT_SERVER_ERROR if last is not None and last.finish_reason == "error" else EXIT_OK


def _print_answer(reasoning_text: str, text: str, tty: bool, calls: Any = (), hide: bool = False) -> None:
    """Reasoning (dimmed on a tty, under plain labels otherwise; `hide`: not at all), the answer without
    the blank lines after reasoning, tool calls."""
    answer = text.lstrip("\n") if reasoning_text else text
    if reasoning_text and not hide:
        if tty:
            _write(reasoning_text + "\n", dim=True)
        else:
            print(f"{REASONING_LABEL}\n{reasoning_text}")
            if answer or not calls:
                print(ANSWER_LABEL)
    if text or not calls:
        print(answer)
    structured.print_tool_calls(calls)


def _cmd_chat(client: Any, args: argparse.Namespace) -> int:
    tty = sys.stdout.isatty()
    if args.stream and not args.json:
        return _chat_stream(client, args, tty)
    out = client.generate(args.model, messages=_messages(args), **_options(args))
    if args.json:
        data = asdict(out)
        data["usage"]["tokens_per_forward"] = out.usage.tokens_per_forward  # a property
        print(json.dumps(data, ensure_ascii=False))
    elif len(out.choices) > 1:
        for choice in out.choices:
            print(f"--- choice {choice.index} (finish: {choice.finish_reason or 'unfinished'}) ---")
            _print_answer(choice.reasoning_text, choice.text, tty, choice.tool_calls, args.hide_reasoning)
        tokens = out.usage.completion_tokens
        print(f"[{out.request_id}: {tokens} tokens in {len(out.choices)} choices]", file=sys.stderr)
    else:
        _print_answer(out.reasoning_text, out.text, tty, out.tool_calls, args.hide_reasoning)
        _stats(out.request_id, out.usage, out.finish_reason)
    finishes = [c.finish_reason for c in out.choices] or [out.finish_reason]
    return EXIT_SERVER_ERROR if "error" in finishes else EXIT_OK


def _chat(args: argparse.Namespace) -> int:
    """`bailing chat`: usage checks the parser cannot make, then the call (--speak: commands/speech.py)."""
    try:
        structured.chat_options(args)  # the files are read before connecting
    except structured.OptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.speak:
        from bailing.commands.speech import spoken_chat

        return spoken_chat(args)
    if args.stream and not args.json and args.n is not None and args.n > 1:
        print(
            f"error: --stream needs n = 1 (got -n {args.n}): the interleaved deltas of several choices "
            "are not readable on a terminal; drop --stream or use -n 1",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return _run(_cmd_chat, args)


# ---- transcribe ------------------------------------------------------------------------------
def _transcribe_options(args: argparse.Namespace) -> dict[str, Any]:
    names = ("max_tokens", "temperature", "seed")
    return {"mime_type": args.mime_type, **{name: getattr(args, name) for name in names}}


def _cmd_transcribe(client: Any, args: argparse.Namespace) -> int:
    if args.stream and not args.json:
        last = None
        with client.transcribe_stream(args.model, args.audio, **_transcribe_options(args)) as stream:
            for chunk in stream:
                _write(chunk.text)
                last = chunk
        _write("\n")
        if last is not None:
            _stats(last.request_id, last.usage, last.finish_reason)
        return EXIT_SERVER_ERROR if last is not None and last.finish_reason == "error" else EXIT_OK
    out = client.transcribe(args.model, args.audio, **_transcribe_options(args))
    if args.json:
        data = asdict(out)
        data["usage"]["tokens_per_forward"] = out.usage.tokens_per_forward  # a property
        print(json.dumps(data, ensure_ascii=False))
    else:
        print(out.text)
        _stats(out.request_id, out.usage, out.finish_reason)
    return EXIT_SERVER_ERROR if out.finish_reason == "error" else EXIT_OK


def _transcribe(args: argparse.Namespace) -> int:
    """`bailing transcribe`: a missing file is a usage error before any connection is made."""
    if not os.path.isfile(args.audio):
        print(f"error: no audio file at {args.audio}", file=sys.stderr)
        return EXIT_USAGE
    return _run(_cmd_transcribe, args)


def _add_transcribe_parser(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser(
        "transcribe", help="transcribe an audio file (WAV, FLAC, OGG, MP3) with a model that accepts audio"
    )
    tr.add_argument("--model", required=True, help="served model name that accepts audio, e.g. ming")
    tr.add_argument("--stream", action="store_true", help="print the transcript as it is produced")
    tr.add_argument("--max-tokens", type=int, default=None, metavar="N", help="transcript tokens at most")
    tr.add_argument("--temperature", type=float, default=None, metavar="T", help="0 = greedy")
    tr.add_argument("--seed", type=int, default=None, help="sampling seed")
    tr.add_argument(
        "--mime-type", default=None, metavar="TYPE", help="e.g. audio/wav (default: from the file name)"
    )
    tr.add_argument("--json", action="store_true", help="print the whole transcription as one JSON object")
    _add_connection_args(tr, None, "request deadline in seconds (default: none)")
    tr.add_argument("audio", metavar="AUDIO", help="path of the audio file")
    tr.set_defaults(func=_transcribe)


# ---- parsers ---------------------------------------------------------------------------------
def _add_connection_args(parser: argparse.ArgumentParser, timeout: float | None, timeout_help: str) -> None:
    parser.add_argument(
        "--address", metavar="HOST:PORT", help="gateway (default: $BAILING_GATEWAY or 127.0.0.1:50051)"
    )
    parser.add_argument("--timeout", type=float, default=timeout, metavar="S", help=timeout_help)
    tls = parser.add_argument_group("TLS", "PEM files; any of them turns TLS on (default: plaintext)")
    tls.add_argument("--tls-ca", metavar="PEM", help="CA of the gateway's certificate ($BAILING_TLS_CA)")
    tls.add_argument("--tls-cert", metavar="PEM", help="client certificate, mutual TLS ($BAILING_TLS_CERT)")
    tls.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert ($BAILING_TLS_KEY)")


def _add_chat_parser(sub: argparse._SubParsersAction) -> None:
    chat = sub.add_parser("chat", help="send one chat message to a running gateway and print the answer")
    chat.add_argument("--model", required=True, help="served model name, e.g. ling")
    chat.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    chat.add_argument("--system", default=None, metavar="TEXT", help="a system message before yours")
    chat.add_argument("--max-tokens", type=int, default=None, metavar="N", help="new tokens at most")
    chat.add_argument("--temperature", type=float, default=None, metavar="T", help="0 = greedy")
    chat.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold")
    chat.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    chat.add_argument("--seed", type=int, default=None, help="sampling seed")
    chat.add_argument(
        "-n", "--n", type=int, default=None, metavar="N",
        help=f"samples to draw, 1..{MAX_SAMPLES}",
    )  # fmt: skip
    chat.add_argument(
        "--thinking", dest="enable_thinking", action=argparse.BooleanOptionalAction, default=None,
        help="turn reasoning on or off (reasoning models; default: the model's)",
    )  # fmt: skip
    chat.add_argument(
        "--thinking-budget", type=int, default=None, metavar="N", help="reasoning tokens at most"
    )
    chat.add_argument(
        "--hide-reasoning", action="store_true",
        help="print only the answer (default: reasoning dimmed on a terminal, else under [reasoning])",
    )  # fmt: skip
    diffusion = chat.add_argument_group(
        "diffusion models (llada2)",
        "block-diffusion decoding; --max-tokens is the generation length. Only for diffusion models: "
        "another model answers INVALID_ARGUMENT (exit 2). Unset flags take the engine's defaults.",
    )
    diffusion.add_argument(
        "--block-length", type=int, default=None, metavar="B", help="tokens per block (32)"
    )
    diffusion.add_argument("--steps", type=int, default=None, metavar="S", help="llada2 steps per block (32)")
    diffusion.add_argument(
        "--threshold", type=float, default=None, metavar="P", help="confidence to commit a token (0.95)"
    )
    diffusion.add_argument(
        "--decoder", default=None, choices=["llada2", "threshold", "hierarchy", "credit"],
        help="parallel decoder (default llada2)",
    )  # fmt: skip
    diffusion.add_argument(
        "--low-threshold", type=float, default=None, metavar="P", help="hierarchy decoder's lower threshold"
    )
    for kind in ("image", "audio", "video"):
        chat.add_argument(
            f"--{kind}", action="append", metavar="PATH", help=f"attach the {kind} file at PATH (repeatable)"
        )
    chat.add_argument("--json", action="store_true", help="print the whole completion as one JSON object")
    spoken = chat.add_argument_group("spoken answers (models with audio output, e.g. ming2)")
    spoken.add_argument("--speak", metavar="OUT", help="also speak the answer into OUT (.wav, .pcm, .opus)")
    spoken.add_argument("--voice", metavar="NAME", help="with --speak: a voice preset of the model")
    spoken.add_argument("--force", action="store_true", help="with --speak: overwrite OUT")
    structured.add_structured_args(chat)
    _add_connection_args(chat, None, "request deadline in seconds (default: none)")
    chat.add_argument("text", metavar="TEXT", help="your message")
    chat.set_defaults(func=_chat, structured=None)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_chat_parser(sub)
    _add_transcribe_parser(sub)
