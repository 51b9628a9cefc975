"""`bailing batch submit | status | list | cancel | results`: queued batch jobs on a running gateway.

Flow: a JSONL file ({"custom_id", "body": <GenerateRequest JSON>} per line) -> `Client.create_batch` ->
batch id on stdout; `--wait` polls `get_batch` (progress on stderr) and writes `batch_results` as JSONL.
Exit codes: 0 submitted, or finished with every item succeeded; 1 server error, or the batch finished
with failed items, failed, was cancelled or expired (submit --wait, results); 2 usage error or the batch
was rejected (INVALID_ARGUMENT; the message lists the bad lines); 3 cannot connect; 4 unknown batch id
(NOT_FOUND); 130 interrupted (Ctrl-C during --wait leaves the batch running on the server).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bailing.commands.client import (
    EXIT_CONNECT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SERVER_ERROR,
    EXIT_USAGE,
    _add_connection_args,
)
from bailing.commands.client import _run as run_client_command

EXIT_NOT_FOUND = 4
RESULTS_TIMEOUT_S = 3600.0  # deadline of one results download (--timeout bounds the other calls)
PLAIN_EVERY_S = 30.0  # progress line period when stderr is not a terminal
RATE_WINDOW_S = 60.0  # items/s is measured over this much recent history
EXIT_CODES_HELP = """exit codes:
  0  submitted; or (--wait, results) the batch completed with every item succeeded
  1  server error; or (--wait, results) the batch finished with failed items, failed,
     was cancelled or expired, or (results) is not finished yet
  2  usage error, or the batch was rejected (INVALID_ARGUMENT: the message lists the bad lines)
  3  cannot connect to the gateway
  4  unknown batch id (NOT_FOUND)
  130 interrupted (Ctrl-C during --wait does not cancel the batch: it keeps running)"""


# ---- pure helpers ----------------------------------------------------------------------------
def exit_code_for_error(exc: Exception) -> int:
    """The exit code of a failed call (a `BailingClientError`)."""
    from bailing.client import BailingConnectionError

    if isinstance(exc, BailingConnectionError):
        return EXIT_CONNECT
    code = getattr(exc, "code", "")
    return {"INVALID_ARGUMENT": EXIT_USAGE, "NOT_FOUND": EXIT_NOT_FOUND}.get(code, EXIT_SERVER_ERROR)


def exit_code_for_batch(info: Any) -> int:
    """0 if the batch completed with every item succeeded, else 1 (failed items, cancelled, unfinished)."""
    ok = info.status == "completed" and info.failed == 0 and info.completed == info.total
    return EXIT_OK if ok else EXIT_SERVER_ERROR


def format_duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_progress(info: Any, rate: float | None) -> str:
    """`ID running: 120/1000 done (3 failed), 12.5 items/s, ETA 1m10s` (rate None or 0: ETA unknown)."""
    done = info.completed + info.failed
    line = f"{info.id} {info.status}: {done}/{info.total} done"
    if info.failed:
        line += f" ({info.failed} failed)"
    if info.finished:
        return line
    if not rate:
        return f"{line}, ETA --"
    eta = format_duration((info.total - done) / rate)
    return f"{line}, {rate:.1f} items/s, ETA {eta}"


class RateMeter:
    """Items per second over the last `window_s` seconds of (time, items done) samples."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, done: int) -> float | None:
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None


def write_results(results: Any, out: str) -> tuple[int, int]:
    """Write JSONL lines to `out` ('-' = stdout; a file appears whole or not at all) -> (lines, errors)."""
    lines = errors = 0
    if out == "-":
        stream, tmp = sys.stdout, None
    else:
        tmp = Path(f"{out}.part")
        stream = tmp.open("w", encoding="utf-8")
    try:
        for result in results:
            stream.write(result.to_json_line() + "\n")
            lines += 1
            errors += result.error is not None
    finally:
        if tmp is not None:
            stream.close()
    if tmp is not None:
        os.replace(tmp, out)
    else:
        sys.stdout.flush()
    return lines, errors


# ---- commands --------------------------------------------------------------------------------
def _run(command: Any, args: argparse.Namespace) -> int:
    """Run `command(client, args)`, mapping client errors to the batch exit codes."""
    return run_client_command(command, args, exit_code_for_error)


def _wait(client: Any, batch_id: str, poll_s: float) -> Any:
    """Poll until the batch is finished, showing progress on stderr; returns the final `BatchInfo`."""
    tty, meter, last_plain = sys.stderr.isatty(), RateMeter(), None
    while True:
        info = client.get_batch(batch_id)
        now = time.monotonic()
        line = format_progress(info, meter.add(now, info.completed + info.failed))
        if tty:
            sys.stderr.write(f"\r\x1b[K{line}")
            sys.stderr.flush()
        elif info.finished or last_plain is None or now - last_plain >= max(poll_s, PLAIN_EVERY_S):
            print(line, file=sys.stderr, flush=True)
            last_plain = now
        if info.finished:
            if tty:
                sys.stderr.write("\n")
            return info
        time.sleep(poll_s)


def _cmd_submit(client: Any, args: argparse.Namespace) -> int:
    info = client.create_batch(
        args.model,
        jsonl=args.jsonl,
        completion_window_s=args.completion_window,
        skip_invalid_items=args.skip_invalid,
    )
    id_stream = sys.stderr if args.output == "-" else sys.stdout  # keep stdout pure JSONL with -o -
    print(info.id, file=id_stream, flush=True)
    if not args.wait:
        return EXIT_OK
    try:
        info = _wait(client, info.id, args.poll)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: batch {info.id} was NOT cancelled and keeps running on the server; "
            f"see `bailing batch status {info.id}`, stop it with `bailing batch cancel {info.id}`",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if args.output is not None:
        _download(client, info, args.output)
    return exit_code_for_batch(info)


def _download(client: Any, info: Any, out: str) -> int:
    lines, errors = write_results(client.batch_results(info.id, timeout=RESULTS_TIMEOUT_S), out)
    where = "stdout" if out == "-" else out
    print(f"[{info.id} {info.status}: {lines} result(s), {errors} error(s) -> {where}]", file=sys.stderr)
    return errors


def _cmd_results(client: Any, args: argparse.Namespace) -> int:
    info = client.get_batch(args.id)
    errors = _download(client, info, args.output)
    if not info.finished:
        print(
            f"note: batch {info.id} is still {info.status}: unfinished items were left out", file=sys.stderr
        )
    return exit_code_for_batch(info) if errors == 0 else EXIT_SERVER_ERROR


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _cmd_status(client: Any, args: argparse.Namespace) -> int:
    info = client.get_batch(args.id)
    if args.json:
        data = {**asdict(info), "finished": info.finished}
        data["usage"]["tokens_per_forward"] = info.usage.tokens_per_forward  # a property
        print(json.dumps(data))
        return EXIT_OK
    u = info.usage
    rows = [
        ("id", info.id),
        ("model", info.model),
        ("status", info.status),
        ("items", f"{info.total} total, {info.completed} completed, {info.failed} failed"),
        ("created", _when(info.created_at)),
        ("started", _when(info.started_at)),
        ("finished", _when(info.finished_at)),
        ("expires", _when(info.expires_at)),
        (
            "usage",
            f"{u.prompt_tokens} prompt, {u.completion_tokens} completion tokens, {u.forwards} forwards",
        ),
    ]
    rows += [(f"metadata.{k}", v) for k, v in sorted(info.metadata.items())]
    for key, value in rows:
        print(f"{key + ':':<10} {value}")
    return EXIT_OK


def _cmd_list(client: Any, args: argparse.Namespace) -> int:
    batches = client.list_batches(args.limit)
    if args.json:
        print(json.dumps([{**asdict(b), "finished": b.finished} for b in batches]))
        return EXIT_OK
    rows = [("ID", "MODEL", "STATUS", "DONE/TOTAL", "FAILED", "CREATED")]
    rows += [
        (b.id, b.model, b.status, f"{b.completed + b.failed}/{b.total}", str(b.failed), _when(b.created_at))
        for b in batches
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def _cmd_cancel(client: Any, args: argparse.Namespace) -> int:
    info = client.cancel_batch(args.id)
    print(format_progress(info, None))
    return EXIT_OK


def _submit(args: argparse.Namespace) -> int:
    """Usage checks the parser cannot make, then the call."""
    if args.output is not None and not args.wait:
        print("error: -o/--output needs --wait (or use `bailing batch results ID -o FILE`)", file=sys.stderr)
        return EXIT_USAGE
    if args.poll <= 0:
        print(f"error: --poll must be > 0 seconds (got {args.poll:g})", file=sys.stderr)
        return EXIT_USAGE
    try:
        args.jsonl = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    return _run(_cmd_submit, args)


# ---- parsers ---------------------------------------------------------------------------------
def _command(sub: Any, name: str, help: str, func: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser


def _add_submit_parser(sub: Any) -> None:
    submit = _command(sub, "submit", "queue a JSONL file of requests; prints the batch id", _submit)
    submit.add_argument(
        "file", metavar="FILE.jsonl", help='one {"custom_id": ..., "body": {request}} per line'
    )
    submit.add_argument("--model", required=True, help="served model name of every item, e.g. ling")
    submit.add_argument("--wait", action="store_true", help="wait until the batch finishes, showing progress")
    submit.add_argument(
        "-o", "--output", metavar="OUT.jsonl",
        help="with --wait: write the results here ('-' = stdout; the id then goes to stderr)",
    )  # fmt: skip
    submit.add_argument(
        "--completion-window", type=float, default=0.0, metavar="S",
        help="unfinished items expire S seconds after submission (default 0 = never)",
    )  # fmt: skip
    submit.add_argument(
        "--skip-invalid", action="store_true",
        help="invalid lines fail alone instead of rejecting the whole batch",
    )  # fmt: skip
    submit.add_argument(
        "--poll", type=float, default=2.0, metavar="S", help="with --wait: poll period (default 2)"
    )
    _add_connection_args(submit, 30.0, "connect and per-call deadline in seconds (default 30)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    batch = sub.add_parser(
        "batch",
        help="queued batch jobs: submit, status, list, cancel, results",
        description=(
            "Queue thousands of requests as one job. FILE.jsonl holds one\n"
            '{"custom_id": ..., "body": <GenerateRequest as JSON>} per line (with\n'
            '"method": "GenerateImage" the body is a GenerateImageRequest, with "method":\n'
            '"SynthesizeSpeech" a SynthesizeSpeechRequest); results come back as\n'
            '{"custom_id": ..., "response": ...}, {"custom_id": ..., "image_response": ...},\n'
            '{"custom_id": ..., "speech_response": ...} (image and audio bytes base64) or\n'
            '{"custom_id": ..., "error": {"code", "message"}} lines.'
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    bsub = batch.add_subparsers(dest="batch_command", required=True, metavar="COMMAND")
    _add_submit_parser(bsub)
    timeout_help = "connect and call deadline in seconds (default 30)"

    status = _command(bsub, "status", "show a batch's status and counts", lambda a: _run(_cmd_status, a))
    status.add_argument("id", metavar="ID", help="batch id")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    _add_connection_args(status, 30.0, timeout_help)

    lst = _command(bsub, "list", "list batches, newest first", lambda a: _run(_cmd_list, a))
    lst.add_argument("--limit", type=int, default=100, metavar="N", help="at most N batches (default 100)")
    lst.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    _add_connection_args(lst, 30.0, timeout_help)

    cancel = _command(bsub, "cancel", "stop a batch (running items finish)", lambda a: _run(_cmd_cancel, a))
    cancel.add_argument("id", metavar="ID", help="batch id")
    _add_connection_args(cancel, 30.0, timeout_help)

    results = _command(
        bsub,
        "results",
        "write one JSONL line per finished item, in input order",
        lambda a: _run(_cmd_results, a),
    )
    results.add_argument("id", metavar="ID", help="batch id")
    results.add_argument("-o", "--output", required=True, metavar="OUT.jsonl", help="'-' = stdout")
    _add_connection_args(results, 30.0, timeout_help)
