"""Helpers for worker tests: a `bailing worker` subprocess wrapper, job sending, stream reading."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

from pipelines.protocol import (
    TASK_GENERATE,
    Event,
    EventType,
    GenerateJob,
    queue_name,
    stream_key,
    workers_key,
)

REPO = Path(__file__).resolve().parents[2]
KV_BYTES = 64 << 20  # the demo model needs little; keep each worker process small


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorkerProcess:
    """One `bailing worker` subprocess, its log in a file, stopped for sure by `close()`."""

    def __init__(
        self, redis_url: str, model: Path, log_path: Path, name: str, *extra: str, family: str = "ling"
    ) -> None:
        self.name, self.log_path = name, log_path
        self.worker_id = f"{name}@test-{uuid.uuid4().hex[:8]}"
        argv = [sys.executable, "-m", "bailing.cli", "worker", "--family", family, "--model", str(model)]
        argv += ["--name", name, "--redis-url", redis_url, "--worker-id", self.worker_id]
        argv += ["--kv-cache-bytes", str(KV_BYTES), *extra]
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in close())
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.redis = redis.Redis.from_url(redis_url)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def heartbeat(self) -> float | None:
        return self.redis.zscore(workers_key(self.name), self.worker_id)

    def wait_registered(self, timeout: float = 60.0) -> float:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            score = self.heartbeat()
            if score is not None:
                return score
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"worker did not register within {timeout} s:\n{self.log()}")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        self.redis.close()


def new_id() -> str:
    return uuid.uuid4().hex


def send(sender, job: GenerateJob, queue: str | None = None) -> str:
    sender.send_task(
        TASK_GENERATE, args=[job.to_dict()], task_id=job.request_id, queue=queue or queue_name(job.model)
    )
    return job.request_id


def read_events(client: redis.Redis, request_id: str, timeout: float = 60.0, until=None) -> list[Event]:
    """The request's events up to its terminal one (or until `until(event)` is true)."""
    events: list[Event] = []
    last, end = "0", time.monotonic() + timeout
    while time.monotonic() < end:
        for _, entries in client.xread({stream_key(request_id): last}, block=200) or []:
            for entry_id, fields in entries:
                last = entry_id
                ev = Event.decode(fields)
                events.append(ev)
                if ev.terminal or (until is not None and until(ev)):
                    return events
    raise AssertionError(f"no terminal event for {request_id} within {timeout} s; got {events}")


def check_stream_shape(events: list[Event], terminal: EventType) -> None:
    """seq 0, 1, 2, ...; STARTED first; exactly one terminal event, last, of the expected type."""
    assert [e.seq for e in events] == list(range(len(events)))
    assert events[0].type == EventType.STARTED and events[0].worker_id
    assert [e.terminal for e in events].count(True) == 1 and events[-1].type == terminal
    assert all(e.type == EventType.DELTA for e in events[1:-1])
