"""`make compose-check`: the docker-compose stack for real, from the compose file users run.

Flow: docker + compose usable (else exit 2) -> base image (a local Debian, built once) -> project image
-> `compose up` (docker-compose.yml + docker/compose-check.yml, project bailing-check) -> the gateway's
health SERVING -> a chat, a transcription, a batch -> a worker's process SIGKILLed: compose's restart
policy brings its container back, healthy, and it serves again -> `compose down -v` of this project only.
One line per step with its time, then PASS (exit 0) or FAIL (exit 1).

    python -m bench.compose_check [--base-image python:3.11-slim --redis-image redis:7] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.compose_images import LOCAL_BASE, build_image, ensure_base

REPO = Path(__file__).resolve().parents[1]
PROJECT = "bailing-check"
IMAGE = "bailing-serve:compose-check"  # docker/compose-check.yml runs this tag
FILES = (REPO / "docker-compose.yml", REPO / "docker" / "compose-check.yml")
SERVICES = ("redis", "init-demo", "gateway", "worker-ling-cpu", "worker-ming-cpu")
KILLED = "worker-ling-cpu"  # serves model ling
LOGS = REPO / ".bailing" / "compose-check"
# The compose files' variables this check sets itself; inherited values would change what runs.
OWN_VARS = ("BAILING_MODELS", "BAILING_API_TOKEN", "BAILING_PORT", "REDIS_IMAGE", "BAILING_MING_IMAGE_STAGE")


class StepFailed(RuntimeError):
    pass


def _probe(argv: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def compose_command() -> list[str] | None:
    """docker-compose (v1) if it works, else the `docker compose` plugin (v2), else None."""
    for argv in (["docker-compose"], ["docker", "compose"]):
        if shutil.which(argv[0]) and (done := _probe([*argv, "version"])) and done.returncode == 0:
            return argv
    return None


def docker_problem() -> str | None:
    """Why docker or compose cannot be used here (None: both work)."""
    if not shutil.which("docker"):
        return "docker not found on PATH (Debian: apt-get install docker.io docker-compose)"
    info = _probe(["docker", "info", "--format", "{{.ServerVersion}}"])
    if info is None or info.returncode != 0:
        why = (info.stderr.strip().splitlines() or ["no answer"])[-1] if info else "no answer"
        return f"the docker daemon is not reachable ({why}); start it: `dockerd > /tmp/dockerd.log 2>&1 &`"
    if compose_command() is None:
        return "neither docker-compose nor `docker compose` works (Debian: apt-get install docker-compose)"
    return None


def _versions(compose: list[str]) -> str:
    server = _probe(["docker", "info", "--format", "{{.ServerVersion}}"])
    tool = _probe([*compose, "version", "--short"])
    return f"docker server {server.stdout.strip()}, {' '.join(compose)} {tool.stdout.strip()}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


class Stack:
    """`compose -p bailing-check -f docker-compose.yml -f docker/compose-check.yml ...` and its containers."""

    def __init__(self, compose: list[str], port: int, redis_image: str) -> None:
        self.argv = [*compose, "-p", PROJECT, *[arg for f in FILES for arg in ("-f", str(f))]]
        self.env = {k: v for k, v in os.environ.items() if k not in OWN_VARS}
        self.env.update(BAILING_PORT=str(port), REDIS_IMAGE=redis_image)
        self.address = f"127.0.0.1:{port}"

    def run(self, *args: str, timeout: float = 600) -> str:
        log = LOGS / "compose.log"
        with log.open("a") as out:
            out.write(f"$ {' '.join(self.argv[:1])} ... {' '.join(args)}\n")
            out.flush()
            done = subprocess.run(
                [*self.argv, *args],
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=out,
                text=True,
                timeout=timeout,
                check=False,
                cwd=REPO,
            )
            out.write(done.stdout)
        if done.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise StepFailed(f"compose {args[0]} exited {done.returncode}:\n{tail}")
        return done.stdout

    def container(self, service: str) -> str:
        (cid,) = self.run("ps", "-a", "-q", service).split()
        return cid

    def project_containers(self) -> list[str]:
        label = f"label=com.docker.compose.project={PROJECT}"
        argv = ["docker", "ps", "-aq", "--filter", label]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()


def inspect(cid: str) -> dict:
    out = subprocess.run(["docker", "inspect", cid], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]


def until(predicate: Callable[[], object], timeout: float, what: str, every: float = 1.0) -> object:
    """The first truthy value of `predicate()`; StepFailed naming `what` after `timeout` seconds."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except Exception as exc:  # not up yet: remember why, try again
            last = exc
        time.sleep(every)
    raise StepFailed(f"no {what} within {timeout:.0f} s" + (f" (last error: {last})" if last else ""))


# ---- the calls through the gateway ------------------------------------------------------------
def wait_serving(stack: Stack, timeout: float) -> str:
    from bailing.client import Client

    with Client(stack.address, timeout=5) as client:
        until(lambda: client.health() == "SERVING", timeout, "health SERVING")
        models = {m.name: m.live_workers for m in client.list_models()}
    return f"{stack.address}; live workers {models}"


def chat(stack: Stack) -> str:
    from bailing.client import Client

    with Client(stack.address, timeout=120) as client:
        answer = client.generate("ling", "Hello! Who are you?", max_tokens=16, temperature=0.0)
    if answer.usage.completion_tokens < 1:
        raise StepFailed(f"ling answered no tokens (finish {answer.finish_reason})")
    tokens, seconds = answer.usage.completion_tokens, answer.timing.total_s
    return f"ling: {tokens} tokens in {seconds:.2f} s (finish {answer.finish_reason})"


def transcribe(stack: Stack) -> str:
    from bailing.client import Client
    from bailing.demo.samples import write_demo_samples

    with tempfile.TemporaryDirectory() as tmp, Client(stack.address, timeout=300) as client:
        wav = write_demo_samples(tmp)["speech.wav"]
        result = client.transcribe("ming", wav, max_tokens=16, temperature=0.0)
        size = wav.stat().st_size
    if result.usage.completion_tokens < 1:
        raise StepFailed(f"ming transcribed no tokens (finish {result.finish_reason})")
    tokens, seconds = result.usage.completion_tokens, result.timing.total_s
    return f"ming: {size} B WAV -> {tokens} tokens in {seconds:.2f} s (finish {result.finish_reason})"


def batch(stack: Stack, items: int = 4) -> str:
    from bailing.client import Client

    requests = [(f"item-{i}", {"prompt": f"Count to {i + 2}.", "max_tokens": 8}) for i in range(items)]
    with Client(stack.address, timeout=60) as client:
        created = client.create_batch("ling", items=requests)
        info = until(lambda: (b := client.get_batch(created.id)).finished and b, 600, "finished batch", 0.5)
        results = list(client.batch_results(created.id))
    answered = sorted(r.custom_id for r in results if r.response is not None)
    if info.status != "completed" or answered != sorted(c for c, _ in requests):
        raise StepFailed(f"batch {info.status}: {info.completed}/{info.total} completed, answered {answered}")
    return f"ling: {info.total} items completed, {len(results)} results"


# ---- a worker dies ----------------------------------------------------------------------------
def kill_worker(stack: Stack) -> tuple[str, dict]:
    """SIGKILL the worker container's main process from the host: a crash, as the OOM killer does it.
    (`docker kill` would not do: docker counts it as a manual stop and skips the restart policy.)"""
    cid = stack.container(KILLED)
    before = inspect(cid)
    try:
        os.kill(before["State"]["Pid"], signal.SIGKILL)
    except PermissionError:
        raise StepFailed("SIGKILL to a container's process needs the daemon's user (root)") from None
    return f"{KILLED} ({cid[:12]}): SIGKILL to pid {before['State']['Pid']}", before


def wait_restarted(stack: Stack, before: dict, timeout: float) -> str:
    """The same container, restarted by its policy (RestartCount up), running and healthy again."""

    def back() -> dict | None:
        state = inspect(before["Id"])
        healthy = state["State"].get("Health", {}).get("Status") == "healthy"
        restarted = state["RestartCount"] > before["RestartCount"]
        return state if restarted and state["State"]["Running"] and healthy else None

    after = until(back, timeout, f"healthy restart of {KILLED}")
    policy = after["HostConfig"]["RestartPolicy"]["Name"]
    return f"restart policy {policy}: restarts {before['RestartCount']} -> {after['RestartCount']}, healthy"


def dump_logs(stack: Stack) -> None:
    """The stack's state and log tails into LOGS, the last lines on stdout."""
    try:
        ps = stack.run("ps", timeout=60)
        logs = stack.run("logs", "--no-color", "--tail", "60", timeout=120)
    except (StepFailed, subprocess.TimeoutExpired) as exc:
        print(f"  (no compose logs: {exc})")
        return
    (LOGS / "failure.log").write_text(ps + "\n" + logs)
    print(ps.rstrip())
    print("\n".join(logs.splitlines()[-30:]))
    print(f"  (the last 60 lines of every service: {LOGS / 'failure.log'})")


# ---- the run ----------------------------------------------------------------------------------
class Steps:
    """Runs and prints steps: `name  ok|FAIL  seconds  detail`; the first failure stops the run."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, name: str, fn: Callable[..., object], *args: object) -> object:
        t0 = time.monotonic()
        try:
            value = fn(*args)
        except Exception as exc:
            print(f"{name:<26} FAIL {time.monotonic() - t0:7.1f} s  {exc}", flush=True)
            raise StepFailed(name) from exc
        detail, *rest = value if isinstance(value, tuple) else (value,)
        print(f"{name:<26} ok   {time.monotonic() - t0:7.1f} s  {detail}", flush=True)
        return rest[0] if rest else detail

    def total(self) -> float:
        return time.monotonic() - self.start


def up(stack: Stack) -> str:
    """`up -d` (compose waits for Redis healthy and init-demo done); what runs, what exited how."""
    stack.run("up", "-d", "--no-build", *SERVICES, timeout=1800)
    states = []
    for service in SERVICES:
        state = inspect(stack.container(service))["State"]
        states.append(f"{service} " + ("up" if state["Running"] else f"exited {state['ExitCode']}"))
    return ", ".join(states)


def run_stack(step: Steps, stack: Stack, wait_s: float) -> None:
    step("compose up", up, stack)
    step("gateway health SERVING", wait_serving, stack, wait_s)
    step("chat", chat, stack)
    step("transcription", transcribe, stack)
    step("batch", batch, stack)
    before = step("kill a worker", kill_worker, stack)
    step("worker restarted", wait_restarted, stack, before, wait_s)
    step("chat after the restart", chat, stack)


def down(stack: Stack) -> str:
    stack.run("down", "-v", "--remove-orphans", timeout=300)
    if left := stack.project_containers():
        raise StepFailed(f"containers of {PROJECT} left: {left}")
    return f"{PROJECT}: containers, network and volumes removed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-image", default=LOCAL_BASE, help=f"BASE_IMAGE ({LOCAL_BASE})")
    parser.add_argument("--redis-image", default=None, help="the Redis service's image (default: the base)")
    parser.add_argument("--wait", type=float, default=900, help="seconds to wait for health (900)")
    parser.add_argument("--keep", action="store_true", help="leave the stack running at the end")
    args = parser.parse_args(argv)
    if problem := docker_problem():
        print(f"compose-check: {problem}")
        return 2
    compose = compose_command()
    LOGS.mkdir(parents=True, exist_ok=True)
    for old in LOGS.glob("*.log"):  # this run's logs only
        old.unlink()
    print(f"compose-check: {_versions(compose)}; logs in {LOGS.relative_to(REPO)}/", flush=True)
    step, ok, stack = Steps(), False, None
    try:
        step("base image", ensure_base, args.base_image, LOGS / "base.log")
        step("project image", build_image, IMAGE, args.base_image, REPO, LOGS / "build.log")
        stack = Stack(compose, free_port(), args.redis_image or args.base_image)
        run_stack(step, stack, args.wait)
        ok = True
    except StepFailed:
        if stack is not None:
            dump_logs(stack)
    finally:
        if stack is not None and not args.keep:
            try:
                step("compose down -v", down, stack)
            except StepFailed:
                ok = False
    print(f"{'PASS' if ok else 'FAIL'} in {step.total():.1f} s", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
