"""Real service processes for end-to-end tests: `bailing gateway` and `bailing worker` subprocesses.

Built on `bailing.child_process.Child` (own process group, log file), so a test can SIGKILL one worker,
start another, and always reap everything it started.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import redis

from bailing.child_process import Child
from pipelines.protocol import workers_key

_LISTENING = re.compile(rb"gateway listening on (\S+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Processes:
    """Starts gateways and workers against one Redis; `close()` stops all of them."""

    def __init__(self, redis_url: str, logs: Path, token: str | None = None) -> None:
        self.redis_url, self.logs, self.token = redis_url, logs, token
        self.redis = redis.Redis.from_url(redis_url)
        self.children: list[Child] = []

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("BAILING_API_TOKEN", None)
        if self.token:
            env["BAILING_API_TOKEN"] = self.token
        return env

    def _start(self, name: str, *args: str) -> Child:
        argv = [sys.executable, "-m", "bailing.cli", *args, "--redis-url", self.redis_url]
        child = Child(name, argv, self.logs / f"{name}-{uuid.uuid4().hex[:6]}.log")
        child.start(self._env())
        self.children.append(child)
        return child

    def gateway(self, *models: str, timeout: float = 60.0) -> str:
        """Start a gateway for `models` on a free port; returns its address once it listens."""
        child = self._start("gateway", "gateway", "--models", ",".join(models), "--port", "0")
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            found = _LISTENING.search(child.log_path.read_bytes())
            if found:
                return found.group(1).decode()
            if child.exit_code() is not None:
                raise AssertionError(child.describe())
            time.sleep(0.05)
        raise AssertionError(f"gateway not listening in {timeout} s: {child.describe()}")

    def worker(
        self, model_dir: Path, name: str, *extra: str, family: str = "ling", timeout: float = 120.0
    ) -> Worker:
        """Start a worker serving `model_dir` as `name`; returns once it heartbeats."""
        worker_id = f"{name}@test-{uuid.uuid4().hex[:6]}"
        port = free_port()
        child = self._start(
            f"worker-{name}", "worker", "--family", family, "--model", str(model_dir), "--name", name,
            "--worker-id", worker_id, "--metrics-port", str(port), *extra,
        )  # fmt: skip
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.redis.zscore(workers_key(name), worker_id) is not None:
                return Worker(child, worker_id, port)
            if child.exit_code() is not None:
                raise AssertionError(child.describe())
            time.sleep(0.05)
        raise AssertionError(f"worker not registered in {timeout} s: {child.describe()}")

    def close(self) -> None:
        for child in self.children:
            child.signal_group(signal.SIGTERM)
        until = time.monotonic() + 20
        for child in self.children:
            while child.group_alive() and time.monotonic() < until:
                time.sleep(0.05)
            child.signal_group(signal.SIGKILL)
            if child.proc is not None:
                child.proc.wait(10)
        self.redis.close()


class Worker:
    def __init__(self, child: Child, worker_id: str, metrics_port: int) -> None:
        self.child, self.worker_id, self.metrics_port = child, worker_id, metrics_port

    def kill(self) -> None:
        self.child.signal_group(signal.SIGKILL)
        self.child.proc.wait(10)

    def metric(self, name: str) -> float:
        """The value of an unlabelled-by-us Prometheus sample `name` (first match) on /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not among the worker's metrics")
