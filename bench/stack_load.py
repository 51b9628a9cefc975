"""What the soak and chaos runs share: `bailing up`'s Stack under supervision, streaming clients that
record how each request ended, and per-process resource samples.

A stream's outcome is one of: OK with every token it asked for (greedy, `ignore_eos`), a retryable
status (UNAVAILABLE / ABORTED: the client may send it again), another status (a failure), or HUNG (no
end within its time limit). Resources are summed over each child's process group (a worker's follower
ranks, Valkey's server under its wrapper).
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

RETRYABLE = frozenset({"UNAVAILABLE", "ABORTED"})


@dataclasses.dataclass
class Outcome:
    """One streamed request as the client saw it (monotonic times)."""

    request_id: str
    started: float
    wanted: int
    code: str = ""  # "OK", a gRPC status name, or "HUNG"
    tokens: int = 0
    first: float = 0.0
    token_times: list[float] = dataclasses.field(default_factory=list)
    ended: float = 0.0
    details: str = ""

    @property
    def complete(self) -> bool:
        return self.code == "OK" and self.tokens == self.wanted

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE

    @property
    def ttft_s(self) -> float | None:
        return self.first - self.started if self.first else None

    def itls_s(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:], strict=False)]


async def stream_request(
    stub: Any, pb: Any, model: str, request_id: str, prompt: str, max_tokens: int, limit_s: float
) -> Outcome:
    """One greedy `ignore_eos` stream; never raises (its end is in the Outcome)."""
    import grpc

    sampling = pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    request = pb.GenerateRequest(model=model, prompt=prompt, sampling=sampling, request_id=request_id)
    out = Outcome(request_id, started=time.monotonic(), wanted=max_tokens)

    async def consume() -> None:
        async for chunk in stub.GenerateStream(request, timeout=limit_s + 5):
            now = time.monotonic()
            if chunk.text:
                out.first = out.first or now
                out.token_times.append(now)
            if chunk.finish_reason:
                out.tokens = chunk.usage.completion_tokens
        out.code = "OK"

    try:
        await asyncio.wait_for(consume(), limit_s)
    except TimeoutError:
        out.code = "HUNG"
    except grpc.aio.AioRpcError as err:
        out.code, out.details = err.code().name, (err.details() or "")[:200]
    out.ended = time.monotonic()
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, max(0, round(q * 100) - 1))]


# ---- the stack ------------------------------------------------------------------------------------
class SupervisedStack:
    """`bailing.stack.Stack` started, with its `supervise()` loop on a thread (restarts dead children)."""

    def __init__(self, dir: Path, models: list[str], replicas: int, policy: Any = None, **kw: Any) -> None:
        from bailing.stack import Stack

        self.stack = Stack(
            port=0, dir=dir, models=models, replicas=replicas, restart_policy=policy, grace_s=10.0,
            log=lambda m: print(f"[stack] {m}", flush=True), **kw,
        )  # fmt: skip
        self.gave_up: Any = None

    def start(self) -> SupervisedStack:
        self.stack.start()
        threading.Thread(target=self._supervise, name="supervise", daemon=True).start()
        return self

    def _supervise(self) -> None:
        self.gave_up = self.stack.supervise(poll_s=0.2)
        if self.gave_up is not None:
            print(f"[stack] crash loop: {self.gave_up.describe()}", flush=True)

    @property
    def address(self) -> str:
        return self.stack.address

    def child(self, name: str) -> Any:
        return next(c for c in self.stack.all_children() if c.name == name)

    def workers(self) -> list[Any]:
        return [c for c in self.stack.children if c.name.startswith("worker-")]

    def wait_serving(self, timeout: float = 180.0) -> float:
        """Seconds until the whole stack is back: every child running (none waiting for its restart),
        every worker heartbeating, and health "" SERVING (raises if not within `timeout`)."""
        import socket

        import redis

        from bailing.client import BailingClientError, Client
        from pipelines.protocol import WORKER_DEAD_AFTER_S, workers_key

        host, t0 = socket.gethostname(), time.monotonic()
        while time.monotonic() - t0 < timeout:
            time.sleep(0.2)
            children = self.stack.all_children()
            if any(c.exit_code() is not None or self.stack.policy.waiting(c.name) for c in children):
                continue
            # each worker process that runs now (not a killed one's last beat) heartbeats
            running = [(c.name.split("-")[1], c.pid) for c in self.workers()]
            try:
                with redis.Redis.from_url(self.stack.redis_url, socket_timeout=2) as db:
                    seconds, micros = db.time()
                    since = seconds + micros / 1e6 - WORKER_DEAD_AFTER_S
                    beats = [db.zscore(workers_key(model), f"{model}@{host}:{pid}") for model, pid in running]
                if not all(beat is not None and beat > since for beat in beats):
                    continue
                with Client(self.address) as client:
                    if client.health("", timeout=2.0) == "SERVING":
                        return time.monotonic() - t0
            except (BailingClientError, redis.RedisError):
                pass
        raise RuntimeError(f"the stack was not back within {timeout:.0f} s")

    def stop(self) -> None:
        self.stack.stop()


def group_resources(child: Any) -> tuple[float, int]:
    """(RSS in MiB, open file descriptors) summed over the child's process tree."""
    import psutil

    if child.proc is None or child.exit_code() is not None:
        return 0.0, 0
    rss, fds = 0, 0
    try:
        root = psutil.Process(child.pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                rss += proc.memory_info().rss
                fds += proc.num_fds()
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        return 0.0, 0
    return rss / 2**20, fds


def metric(port: int, name: str) -> float:
    """The first sample of Prometheus metric `name` served on `port`."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)
