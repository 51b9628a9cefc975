"""`bailing speak` (say a text with a model that synthesizes speech, e.g. Ming) and `bailing chat --speak`
(a chat answer printed as it streams and spoken into a file).

Flow: argv -> usage checks (output free unless --force, --speaker-audio readable) -> `Client`:
`synthesize_speech` (the whole file, written at once) or, with --stream, `synthesize_speech_stream`
(chunks appended as they arrive through `SpeechFileWriter`, time to first audio printed); chat:
`Client.stream(..., speech=...)`, text to stdout, audio to the file. The format comes from --format,
else from the output's suffix (.wav, .pcm / .raw, .opus / .ogg), else wav. A failed call leaves no file.
Exit codes as `bailing chat`: 0 ok, 1 server error, 2 usage or INVALID_ARGUMENT, 3 cannot connect.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from bailing.commands.client import (
    EXIT_OK,
    EXIT_SERVER_ERROR,
    EXIT_USAGE,
    _add_connection_args,
    _messages,
    _options,
    _run,
    _stats,
    _write,
)
from bailing.commands.image import write_file

FORMATS = ("wav", "pcm", "opus")
SUFFIX_FORMATS = {".wav": "wav", ".pcm": "pcm", ".raw": "pcm", ".opus": "opus", ".ogg": "opus"}


# ---- pure helpers ----------------------------------------------------------------------------
def output_format(fmt: str | None, output: str | None) -> str:
    """--format, else the one -o's suffix names, else wav."""
    if fmt:
        return fmt
    return SUFFIX_FORMATS.get(Path(output).suffix.lower(), "wav") if output else "wav"


def speech_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `synthesize_speech` keyword options the flags set (unset flags: the model's defaults)."""
    names = ("voice", "speaker_text", "speed", "sample_rate", "seed", "temperature", "instruction")
    options = {name: getattr(args, name) for name in names}
    options.update(speaker_audio=args.speaker_audio, guidance_scale=args.guidance, format=args.format)
    return options


def describe(result: Any) -> str:
    """`2.40 s, 24000 Hz wav, seed 7`"""
    return f"{result.duration_s:.2f} s, {result.sample_rate} Hz {result.format}, seed {result.seed}"


def _usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


# ---- bailing speak ---------------------------------------------------------------------------
def _speak_whole(client: Any, args: argparse.Namespace) -> int:
    result = client.synthesize_speech(args.model, args.text, **speech_options(args))
    write_file(args.out, result.audio)
    print(f"wrote {args.out} ({len(result.audio)} bytes, {describe(result)})", file=sys.stderr)
    total = result.timing.total_s
    print(f"[{result.request_id}: {result.usage.chunks} chunk(s) in {total:.2f} s]", file=sys.stderr)
    return EXIT_OK


def _speak_stream(client: Any, args: argparse.Namespace) -> int:
    from bailing.client import SpeechFileWriter

    started, first = time.monotonic(), None
    writer = SpeechFileWriter(args.out, args.format)
    try:
        with client.synthesize_speech_stream(args.model, args.text, **speech_options(args)) as chunks:
            for chunk in chunks:
                if chunk.audio and first is None:
                    first = time.monotonic() - started
                    print(f"first audio after {first:.3f} s", file=sys.stderr, flush=True)
                writer.write(chunk)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return _report(writer, args.out)


def _report(writer: Any, out: Path) -> int:
    summary = writer.summary
    if summary is None:
        print("error: the stream ended without its summary", file=sys.stderr)
        return EXIT_SERVER_ERROR
    print(f"wrote {out} ({writer.file_bytes} bytes, {describe(summary)})", file=sys.stderr)
    ttfa = summary.timing.time_to_first_token_s
    print(f"[{summary.request_id}: {writer.chunks} chunk(s), first audio at {ttfa:.3f} s]", file=sys.stderr)
    return EXIT_OK


def _speak(args: argparse.Namespace) -> int:
    """`bailing speak`: usage checks the parser cannot make (before connecting), then the call."""
    if args.speaker_audio is not None and not os.path.isfile(args.speaker_audio):
        return _usage_error(f"no audio file at {args.speaker_audio} (--speaker-audio)")
    if args.voice and args.speaker_audio:
        return _usage_error("--voice and --speaker-audio go separately: a preset voice, or a clip to clone")
    args.format = output_format(args.format, args.output)
    args.out = Path(args.output or f"speech.{args.format}")
    if args.out.exists() and not args.force:
        return _usage_error(f"{args.out} exists (use --force to overwrite)")
    return _run(_speak_stream if args.stream else _speak_whole, args)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "speak",
        help="say TEXT with a model that synthesizes speech, e.g. ming2",
        description="Synthesize TEXT and write it to -o OUT (.wav, .pcm = raw 16-bit mono, .opus). "
        "Unset options take the model's defaults.",
    )
    p.add_argument("--model", required=True, help="served model name with audio output, e.g. ming2")
    p.add_argument("-o", "--output", metavar="OUT", help="output file (default: speech.FORMAT in the cwd)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument(
        "--format", choices=FORMATS, default=None, help="audio format (default: from -o's suffix, else wav)"
    )
    p.add_argument("--voice", metavar="NAME", help="a voice preset of the model (`bailing models --json`)")
    p.add_argument(
        "--speaker-audio", metavar="FILE", help="a clip of the voice to clone (WAV, FLAC, OGG, MP3)"
    )
    p.add_argument("--speaker-text", metavar="TEXT", help="what the --speaker-audio clip says")
    p.add_argument("--speed", type=float, metavar="X", help="tempo, 0.5..2.0 (pitch kept; default 1)")
    p.add_argument("--sample-rate", type=int, metavar="HZ", help="output rate (default: the model's)")
    p.add_argument("--seed", type=int, metavar="S", help="same seed + same request = same audio")
    p.add_argument("--temperature", type=float, metavar="T", help="the flow head's noise scale, 0..2")
    p.add_argument("--guidance", type=float, metavar="G", help="the flow head's guidance scale")
    p.add_argument("--instruction", metavar="TEXT", help="a style instruction (models that take one)")
    p.add_argument(
        "--stream", action="store_true", help="write chunks as they arrive; print the time to first audio"
    )
    _add_connection_args(p, None, "request deadline in seconds (default: none)")
    p.add_argument("text", metavar="TEXT", help="what to say")
    p.set_defaults(func=_speak)


# ---- bailing chat --speak --------------------------------------------------------------------
def _cmd_spoken_chat(client: Any, args: argparse.Namespace) -> int:
    from bailing.client import SpeechFileWriter

    speech = {"voice": args.voice, "format": args.speak_format}
    writer, last = SpeechFileWriter(args.speak_out, args.speak_format), None
    try:
        with client.stream(args.model, messages=_messages(args), speech=speech, **_options(args)) as stream:
            for chunk in stream:
                _write(chunk.text.lstrip("\n") if last is None else chunk.text)
                if chunk.audio is not None:
                    writer.write(chunk.audio)
                last = chunk
    except BaseException:
        writer.abort()
        raise
    writer.close()
    _write("\n")
    if last is not None:
        _stats(last.request_id, last.usage, last.finish_reason)
    if writer.summary is not None:
        print(
            f"wrote {args.speak_out} ({writer.file_bytes} bytes, {describe(writer.summary)})", file=sys.stderr
        )
    return EXIT_SERVER_ERROR if last is None or last.finish_reason == "error" else EXIT_OK


def spoken_chat(args: argparse.Namespace) -> int:
    """`bailing chat --speak OUT`: usage checks, then the streamed, spoken answer."""
    if args.json or (args.n is not None and args.n > 1):
        return _usage_error("--speak streams one spoken answer: drop --json and -n")
    args.speak_format = output_format(None, args.speak)
    args.speak_out = Path(args.speak)
    if args.speak_out.exists() and not args.force:
        return _usage_error(f"{args.speak_out} exists (use --force to overwrite)")
    return _run(_cmd_spoken_chat, args)
