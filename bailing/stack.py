"""The local stack behind `bailing up`: demo checkpoints, an embedded Valkey, the gateway and one worker
per demo model, all child processes of one launcher.

Flow: `Stack.start()` -> `write_demo_models(dir)` -> Valkey (skipped when a Redis URL is given) ->
`bailing gateway` + `bailing worker`s -> poll grpc health "" until SERVING -> `supervise()` restarts a
child that dies, with backoff (`bailing.supervise.RestartPolicy`), until a crash loop. Every child runs
in its own process group with its output in `<dir>/logs/<name>.log`; `stop()` sends SIGTERM to each
group, SIGKILL to what is left after the grace period, and stops Valkey last (the others need it to
drain). The embedded Valkey keeps an append-only file in `<dir>/valkey`, so a restart keeps its data.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bailing.child_process import Child
from bailing.supervise import RestartPolicy

_LISTENING = re.compile(rb"gateway listening on (\S+):(\d+)")
_ANY_HOST = ("", "0.0.0.0", "::", "[::]")


class StackError(RuntimeError):
    """The stack could not start, or a child died; the message names the child and quotes its log."""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _check_port_free(host: str, port: int, flag: str = "--port") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StackError(
                f"cannot use {host}:{port} for the gateway ({exc.strerror}); is another `bailing up` "
                f"running? Choose another port with {flag}."
            ) from None


class Stack:
    """Gateway, workers and (unless `redis_url` is given) an embedded Valkey as child processes.

    `with Stack(port=0, dir=tmp) as stack: Client(stack.address)...`; `port=0` picks a free port.
    """

    def __init__(
        self,
        *,
        port: int = 50051,
        host: str = "127.0.0.1",
        dir: str | Path = ".bailing/demo",
        redis_url: str | None = None,
        metrics_port_base: int = 0,
        device: str = "cpu",
        token: str | None = None,
        ready_timeout_s: float = 300.0,
        grace_s: float = 15.0,
        log: Callable[[str], None] | None = None,
        models: Sequence[str] | None = None,
        tensor_parallel: int = 1,
        expert_parallel: bool = False,
        restart_policy: RestartPolicy | None = None,
        replicas: int = 1,
        http_port: int | None = None,
        kv_cache_bytes: int | None = None,
        compile_decode: bool = False,
    ) -> None:
        self.port, self.host, self.dir = port, host, Path(dir).resolve()
        self.http_port = http_port  # the OpenAI-compatible HTTP API; None = off, 0 = a free port
        self.redis_url = redis_url
        self.metrics_port_base, self.device, self.token = metrics_port_base, device, token
        self.ready_timeout_s, self.grace_s = ready_timeout_s, grace_s
        self.only = None if models is None else tuple(models)  # demo models to serve; None = all
        self.worker_flags = ["--tensor-parallel", str(tensor_parallel)] + [
            "--expert-parallel"
        ] * expert_parallel
        if kv_cache_bytes is not None:  # else each worker sizes its pool from its model (engine.kv_cache)
            self.worker_flags += ["--kv-cache-bytes", str(kv_cache_bytes)]
        # The demo models are a few MB: a compiled decode graph gains them nothing, and compiling costs
        # each worker tens of CPU seconds at start and 100-250 MiB (bench/demo_rss.py)
        self.worker_flags.append("--compile-decode" if compile_decode else "--no-compile-decode")
        self.models: dict[str, Path] = {}  # served name -> demo checkpoint folder
        self.families: dict[str, str] = {}  # served name -> the worker's --family
        self.valkey: Child | None = None
        self.children: list[Child] = []  # gateway first, then the workers (Valkey is separate)
        self._log = log or (lambda message: None)
        self._kill_now = threading.Event()
        self._address: str | None = None
        self.policy = restart_policy or RestartPolicy()
        self._stopping = threading.Event()  # set by stop(): supervise() restarts nothing more
        self._restarting = threading.Lock()  # a restart and stop() never interleave
        if replicas < 1:
            raise StackError(f"replicas must be >= 1, got {replicas}")
        self.replicas = replicas  # workers per model
        self._env: dict[str, str] = {}

    # ---- public API --------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """host:port where clients reach the gateway (known once `start()` has returned)."""
        if self._address is None:
            raise StackError("the stack is not started")
        return self._address

    @property
    def http_address(self) -> str:
        """host:port of the gateway's OpenAI-compatible HTTP API (StackError if it is off)."""
        if self.http_port is None:
            raise StackError("the stack serves no HTTP API (http_port is None)")
        host = "127.0.0.1" if self.host in _ANY_HOST else self.host
        return f"{host}:{self.http_port}"

    def all_children(self) -> list[Child]:
        return [*self.children, *([self.valkey] if self.valkey else [])]

    def start(self) -> None:
        """Start everything and return once health "" is SERVING; on failure stop all and raise."""
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def exited(self) -> Child | None:
        """The first child (Valkey included) that is no longer running, if any."""
        return next((c for c in self.all_children() if c.exit_code() is not None), None)

    def supervise(self, poll_s: float = 0.5) -> Child | None:
        """Restart children that die, with backoff; return the first one caught in a crash loop
        (None once `stop()` began)."""
        while not self._stopping.is_set():
            now = time.monotonic()
            for child in self.all_children():
                if self.policy.waiting(child.name):
                    if self.policy.due(child.name, now):
                        self._restart(child)
                    continue
                code = child.exit_code()
                if code is None:
                    continue
                delay = self.policy.died(child.name, now)
                if delay is None:
                    return child
                n = self.policy.records[child.name].restarts
                self._log(f"{child.name} exited with code {code}; restart #{n} in {delay:g} s")
            time.sleep(poll_s)
        return None

    def restarts(self) -> dict[str, int]:
        """Child name -> how many times `supervise` restarted it."""
        return self.policy.restarts()

    def stop(self) -> None:
        """SIGTERM every child's group, SIGKILL what is left after `grace_s`; Valkey last. Idempotent."""
        atexit.unregister(self.stop)
        with self._restarting:
            self._stopping.set()
        self._terminate(self.children)
        if self.valkey is not None:
            self._terminate([self.valkey])

    def kill_now(self) -> None:
        """Make a running or future `stop()` skip the grace period (e.g. on a second Ctrl-C)."""
        self._kill_now.set()

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- starting ----------------------------------------------------------------------------
    def _start(self) -> None:
        from bailing.demo.writer import DEMO_MODELS, write_demo_models
        from gateway.protos import ensure_generated

        if self.port:
            _check_port_free(self.host, self.port)
        if self.http_port:
            _check_port_free(self.host, self.http_port, "--http-port")
        elif self.http_port == 0:  # chosen here: a restarted gateway must bind the same one
            self.http_port = _free_port(self.host)
        ensure_generated()  # once here, rather than racing in every child on a fresh checkout
        self._log(f"demo checkpoints: {self.dir}")
        try:
            self.models = write_demo_models(self.dir, self.only)
        except ValueError as exc:
            raise StackError(str(exc)) from None
        self.families = {model.name: model.family for model in DEMO_MODELS}
        if any(self.families[name] == "ming" for name in self.models):
            from bailing.demo.samples import write_demo_samples

            write_demo_samples(self.dir / "samples")  # what the banner's media examples send
        # MALLOC_ARENA_MAX: a worker's many threads otherwise grow glibc arenas for minutes under load
        env = {"MALLOC_ARENA_MAX": "2", **os.environ, "PYTHONUNBUFFERED": "1"}
        if self.redis_url is None:
            self.redis_url = self._start_valkey(env)
        env["BAILING_REDIS_URL"] = self.redis_url
        self._env = env
        self.children = [self._gateway_child(), *self._worker_children()]
        for child in self.children:
            self._log(f"starting {child.name} (log: {child.log_path})")
            self._launch(child)
        self._wait_serving(time.monotonic() + self.ready_timeout_s)
        gateway = self.children[0]  # a restarted gateway binds the port this one got
        gateway.argv[gateway.argv.index("--port") + 1] = self.address.rsplit(":", 1)[1]

    def _launch(self, child: Child, append: bool = False) -> None:
        child.start(self._env, append)
        self.policy.started(child.name, time.monotonic())

    def _restart(self, child: Child) -> None:
        """Start `child` again, once whatever is left of its process group is gone."""
        child.signal_group(signal.SIGKILL)  # e.g. valkey-server outliving its killed wrapper
        deadline = time.monotonic() + 10.0
        while child.group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if child.proc is not None:
            child.proc.wait()
        with self._restarting:
            if self._stopping.is_set():
                return
            self._launch(child, append=True)
        self._log(f"{child.name} restarted (pid {child.pid})")

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "bailing.cli", *args]

    def _metrics_args(self, offset: int) -> list[str]:
        return ["--metrics-port", str(self.metrics_port_base + offset)] if self.metrics_port_base else []

    def _http_args(self) -> list[str]:
        return [] if self.http_port is None else ["--http-port", str(self.http_port)]

    def _gateway_child(self) -> Child:
        argv = self._cli(
            "gateway", "--models", ",".join(self.models), "--host", self.host, "--port", str(self.port),
            "--redis-url", self.redis_url or "", "--drain-grace", f"{self.grace_s / 2:g}",
            *self._metrics_args(0), *self._http_args(),
        )  # fmt: skip
        return Child("gateway", argv, self.dir / "logs" / "gateway.log")

    def _worker_children(self) -> list[Child]:
        children = []
        served = [(name, path, r) for name, path in self.models.items() for r in range(1, self.replicas + 1)]
        for i, (name, path, replica) in enumerate(served, start=1):
            argv = self._cli(
                "worker", "--family", self.families[name], "--model", str(path), "--name", name,
                "--device", self.device, *self.worker_flags,
                "--redis-url", self.redis_url or "", "--shutdown-grace", f"{self.grace_s / 2:g}",
                *self._metrics_args(i),
            )  # fmt: skip
            label = f"worker-{name}" if replica == 1 else f"worker-{name}-{replica}"
            children.append(Child(label, argv, self.dir / "logs" / f"{label}.log"))
        return children

    def _start_valkey(self, env: dict[str, str]) -> str:
        """Start the embedded Valkey (`python -m bailing.embedded_valkey`, its own group); wait for PING."""
        import redis

        port = _free_port("127.0.0.1")
        argv = [
            sys.executable,
            "-m",
            "bailing.embedded_valkey",
            "--port",
            str(port),
            "--data-dir",
            str(self.dir / "valkey"),
        ]
        self.valkey = Child("valkey", argv, self.dir / "logs" / "valkey.log")
        self._env = env
        self._launch(self.valkey)
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            if self.valkey.exit_code() is not None:
                raise StackError(f"the embedded Valkey failed to start: {self.valkey.describe()}")
            try:
                redis.Redis.from_url(url, socket_timeout=1.0).ping()
            except redis.RedisError:
                time.sleep(0.1)
                continue
            self._log(f"embedded valkey: {url} (append-only file in {self.dir / 'valkey'})")
            return url
        raise StackError(f"the embedded Valkey did not answer PING within 30 s: {self.valkey.describe()}")

    def _gateway_address(self) -> str | None:
        """host:port from the gateway's "gateway listening on HOST:PORT" line; None before it appears."""
        try:
            match = _LISTENING.search(self.children[0].log_path.read_bytes())
        except OSError:
            match = None
        if match is None:
            return None if self.port == 0 else f"{self.host}:{self.port}"
        host, port = match.group(1).decode(), match.group(2).decode()
        host = "127.0.0.1" if host in _ANY_HOST else host
        return f"{host}:{port}"

    def _wait_serving(self, deadline: float) -> None:
        from bailing.client import BailingClientError, Client

        status = "no answer"
        while time.monotonic() < deadline:
            dead = self.exited()
            if dead is not None:
                raise StackError(f"{dead.name} exited during startup: {dead.describe()}")
            address = self._gateway_address()
            if address is not None:
                with Client(address, token=self.token) as client:
                    try:
                        status = client.health("", timeout=2.0)
                    except BailingClientError as exc:
                        status = exc.code
                if status == "SERVING":
                    self._address = address
                    return
            time.sleep(0.5)
        report = "\n\n".join(child.describe() for child in self.all_children())
        limit = f"{self.ready_timeout_s:g} s"
        raise StackError(f"the stack was not ready within {limit} (gateway health: {status}):\n\n{report}")

    # ---- stopping ----------------------------------------------------------------------------
    def _terminate(self, children: list[Child]) -> None:
        for child in children:
            child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while any(c.group_alive() for c in children):
            if self._kill_now.is_set() or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        for child in children:
            if child.group_alive():
                self._log(f"{child.name} did not stop within {self.grace_s:g} s: killing it")
                child.signal_group(signal.SIGKILL)
            if child.proc is not None:
                child.proc.wait()
