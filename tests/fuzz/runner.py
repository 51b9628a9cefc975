"""Running fuzz cases against a gateway and judging their outcomes.

`Runner.run(case)` sends one case (a protobuf request through a raw-bytes gRPC channel, so malformed
bytes travel as they are; an H2Case over its own HTTP/2 connection) and returns its `Outcome`: the
status code name, its message, the seconds it took. `problem(case, outcome)` is the rule: every
case ends with a documented status and a one-line message (never UNKNOWN or INTERNAL, never a stack
trace, never silence until the client gives up). `Tally` counts statuses per table row.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from gateway.api import pb
from tests.fuzz.batches import KNOWN_BATCH
from tests.fuzz.cases import STREAMING, Case
from tests.fuzz.wire import METHODS, H2Case, RawBytes, h2_exchange

DOCUMENTED = (
    "OK",
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "UNAVAILABLE",
    "UNAUTHENTICATED",
    "DEADLINE_EXCEEDED",
    "CANCELLED",
    "OUT_OF_RANGE",
)
CALL_TIMEOUT_S = 120.0  # a call still unanswered by then hangs
MAX_MESSAGE_BYTES = 2048  # of UTF-8: what every gRPC client receives in its trailers


@dataclass(frozen=True)
class Outcome:
    code: str  # a grpc.StatusCode name; for raw HTTP/2, "no answer" / "RST_STREAM" / "GOAWAY" / "HTTP 4xx"
    details: str
    seconds: float


class Runner:
    """Sends cases to the gateway at `address`; remembers the batches it created (for KNOWN_BATCH)."""

    def __init__(self, address: str, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.address, self.timeout_s = address, timeout_s
        options = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", -1)]
        self.channel = grpc.insecure_channel(address, options=options)
        self.batches: list[str] = []
        self._lock = threading.Lock()
        self._random = random.Random(0)

    def close(self) -> None:
        self.channel.close()

    def run(self, case: Case) -> Outcome:
        started = time.monotonic()
        if isinstance(case.request, H2Case):
            code, details = _h2_outcome(h2_exchange(self.address, case.request, self.timeout_s))
            return Outcome(code, details, time.monotonic() - started)
        data = case.request.data if isinstance(case.request, RawBytes) else self._bytes(case.request)
        try:
            reply = self._call(case, data)
        except grpc.RpcError as err:
            return Outcome(err.code().name, err.details() or "", time.monotonic() - started)
        if case.rpc == "CreateBatch":
            with self._lock:
                self.batches.append(pb.Batch.FromString(reply).id)
        return Outcome("OK", "", time.monotonic() - started)

    def run_all(self, cases: list[Case], concurrency: int = 4) -> list[Outcome]:
        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(self.run, cases))

    def _bytes(self, request) -> bytes:
        if getattr(request, "id", None) == KNOWN_BATCH:
            with self._lock:
                known = self._random.choice(self.batches) if self.batches else "batch_none"
            request = type(request)(id=known)
        return request.SerializeToString()

    def _call(self, case: Case, data: bytes) -> bytes:
        identity = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
        if case.rpc in STREAMING:
            replies = list(self.channel.unary_stream(case.method, **identity)(data, timeout=self.timeout_s))
            return replies[-1] if replies else b""
        return self.channel.unary_unary(case.method, **identity)(data, timeout=self.timeout_s)


def _h2_outcome(answer) -> tuple[str, str]:
    if answer.status:
        return answer.status, answer.message
    if answer.timed_out:
        return "no answer", "nothing came back before the client gave up"
    if answer.reset is not None:
        return "RST_STREAM", f"error code {answer.reset}"
    if answer.http_status and answer.http_status != "200":
        return f"HTTP {answer.http_status}", ""
    return "GOAWAY", "the connection closed"


def problem(case: Case, outcome: Outcome) -> str | None:
    """Why `outcome` breaks the rule, or None when it keeps it."""
    code, details = outcome.code, outcome.details
    h2 = case.request if isinstance(case.request, H2Case) else None
    if code == "DEADLINE_EXCEEDED" and (h2 is None or "grpc-timeout" not in dict(h2.headers)):
        return f"hang: no answer within {outcome.seconds:.0f} s"
    if h2 is not None and code not in DOCUMENTED:
        return _h2_problem(h2, code, details)
    if code not in DOCUMENTED:
        return f"status {code}: {details[:300]!r}"
    if code != "OK" and not details.strip():
        return f"{code} without a message"
    if "Traceback" in details or 'File "' in details:
        return f"{code} with a stack trace in its message"
    if len(details.encode()) > MAX_MESSAGE_BYTES:
        return f"{code} with a {len(details.encode())}-byte message"
    return None


# gRPC core's own answers to compression framing it cannot read, sent before any gateway code runs (the
# gateway cannot change them): an unknown grpc-encoding, a compressed flag on a call without
# grpc-encoding, a payload that does not inflate. gRPC's PROTOCOL-HTTP2.md makes these protocol errors.
CORE_COMPRESSION_ERRORS = (
    "Error parsing 'grpc-encoding' metadata",
    "Compression bit set but no encoding configured",
    "Decompression failed",
)


def _h2_problem(case: H2Case, code: str, details: str) -> str | None:
    """Transport-level answers are fine for requests that are not gRPC; silence never is."""
    headers = dict(case.headers)
    not_grpc = not headers.get("content-type", "").startswith("application/grpc")
    if code == "UNIMPLEMENTED" and case.path not in METHODS:
        return None
    if code in ("HTTP 415", "RST_STREAM", "GOAWAY") and not_grpc:
        return None
    compression = headers.get("grpc-encoding", "identity") != "identity" or any(
        f[:1] == b"\x01" for f in case.frames
    )
    if code == "INTERNAL" and compression and details.startswith(CORE_COMPRESSION_ERRORS):
        return None
    return f"HTTP/2 {case.label}: {code} {details[:200]!r}"


class Tally:
    """Status counts per table row (`key` of the case: its row by default), the slowest call per row
    and overall, and the cases that broke the rule."""

    def __init__(self, key: Callable[[Case], str] = lambda case: case.row) -> None:
        self.key = key
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.slowest: dict[str, float] = defaultdict(float)
        self.slow: list[tuple[float, Case, str]] = []  # the slowest calls, slowest first
        self.problems: list[tuple[Case, Outcome, str]] = []

    def add(self, case: Case, outcome: Outcome) -> None:
        row = self.key(case)
        self.counts[row][outcome.code] += 1
        self.slowest[row] = max(self.slowest[row], outcome.seconds)
        self.slow = sorted([*self.slow, (outcome.seconds, case, outcome.code)], key=lambda s: -s[0])[:5]
        why = problem(case, outcome)
        if why is not None:
            self.problems.append((case, outcome, why))

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def codes(self) -> list[str]:
        together = Counter()
        for counts in self.counts.values():
            together.update(counts)
        return [code for code, _ in together.most_common()]

    def markdown(self, title: str) -> str:
        codes = self.codes()
        lines = [f"| {title} | calls | " + " | ".join(codes) + " | slowest (s) |"]
        lines.append("|---|---:|" + "---:|" * len(codes) + "---:|")
        for row in sorted(self.counts, key=lambda r: -sum(self.counts[r].values())):
            counts = self.counts[row]
            cells = " | ".join(str(counts.get(code, "")) for code in codes)
            lines.append(f"| {row} | {sum(counts.values())} | {cells} | {self.slowest[row]:.2f} |")
        return "\n".join(lines)

    def report_slow(self) -> str:
        return "\n".join(f"- {seconds:.1f} s, {code}: {case!r}"[:400] for seconds, case, code in self.slow)

    def report_problems(self, limit: int = 20) -> str:
        shown = [
            f"- {why}\n  {case!r}\n  -> {outcome.code}: {outcome.details[:200]!r}"
            for case, outcome, why in self.problems[:limit]
        ]
        more = len(self.problems) - len(shown)
        return "\n".join(shown) + (f"\n(and {more} more)" if more > 0 else "")
