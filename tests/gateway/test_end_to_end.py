"""The gateway in front of a real `bailing worker` on the demo Ling checkpoint (Redis + Celery, no fakes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest
import redis

from gateway.api import pb, pb_grpc
from pipelines.protocol import Event, EventType, stream_key, workers_key

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


class Worker:
    def __init__(self, redis_url: str, model_dir: Path, name: str, log_path: Path) -> None:
        self.name, self.log_path = name, log_path
        self.worker_id = f"{name}@e2e-{uuid.uuid4().hex[:6]}"
        argv = [sys.executable, "-m", "bailing.cli", "worker", "--family", "ling", "--model", str(model_dir)]
        argv += ["--name", name, "--redis-url", redis_url, "--worker-id", self.worker_id]
        argv += ["--max-num-seqs", "4", "--kv-cache-bytes", str(64 << 20)]
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in close())
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.redis = redis.Redis.from_url(redis_url)

    def wait_registered(self, timeout: float = 120.0) -> None:
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.redis.zscore(workers_key(self.name), self.worker_id) is not None:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log_path.read_text()}")
            time.sleep(0.1)
        raise AssertionError(f"worker not registered in {timeout} s:\n{self.log_path.read_text()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        self.redis.close()


@pytest.fixture(scope="module")
def e2e(redis_url, demo_ling, tmp_path_factory):
    """(stub, model name, redis_url): a gateway thread + one real worker, shared by this module."""
    if not (REPO / "workers" / "app.py").is_file():
        pytest.skip("workers/ is not there yet")
    from gateway.config import GatewayConfig
    from tests.gateway.conftest import GatewayThread

    name = f"ling-e2e-{uuid.uuid4().hex[:6]}"
    worker = Worker(redis_url, demo_ling, name, tmp_path_factory.mktemp("e2e") / "worker.log")
    gw = None
    try:
        worker.wait_registered()
        gw = GatewayThread(GatewayConfig(redis_url=redis_url, models=(name,), port=0)).start()
        with grpc.insecure_channel(gw.address) as channel:
            yield pb_grpc.InferenceStub(channel), name, redis_url, worker
    finally:
        if gw is not None:
            gw.stop()
        worker.close()


def greedy(model: str, n: int = 8, **kw) -> pb.GenerateRequest:
    sampling = pb.SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
    return pb.GenerateRequest(
        model=model, prompt=kw.pop("prompt", "The quick brown fox"), sampling=sampling, **kw
    )


def test_models_lists_the_real_worker(e2e):
    stub, name, _, _ = e2e
    (info,) = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
    assert (info.name, info.family, info.live_workers) == (name, "ling", 1)
    assert info.max_model_len > 0 and "text" in info.modalities


def test_unary_and_stream_agree(e2e):
    stub, name, _, _ = e2e
    resp = stub.Generate(greedy(name), timeout=60)
    assert (
        resp.finish_reason == "length" and resp.usage.completion_tokens == 8 and resp.usage.prompt_tokens > 0
    )
    assert resp.text and resp.timing.total_s >= resp.timing.time_to_first_token_s > 0
    chunks = list(stub.GenerateStream(greedy(name), timeout=60))
    assert "".join(c.text for c in chunks) == resp.text
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 8


def test_chat_messages(e2e):
    stub, name, _, _ = e2e
    msgs = [pb.Message(role="user", content=[pb.ContentPart(text="Hello!")])]
    sampling = pb.SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    resp = stub.Generate(pb.GenerateRequest(model=name, messages=msgs, sampling=sampling), timeout=60)
    assert resp.usage.completion_tokens == 4


def test_client_cancel_reaches_the_engine(e2e):
    stub, name, redis_url, _ = e2e
    rid = f"e2e-cancel-{uuid.uuid4().hex[:6]}"
    call = stub.GenerateStream(greedy(name, n=2000, request_id=rid), timeout=60)
    next(c for c in call if c.text)
    call.cancel()
    r = redis.Redis.from_url(redis_url)
    until = time.monotonic() + 20
    last = None
    while time.monotonic() < until:
        entries = r.xrevrange(stream_key(rid), count=1)
        last = Event.decode(entries[0][1]) if entries else None
        if last is not None and last.terminal:
            break
        time.sleep(0.1)
    assert last is not None and last.type is EventType.CANCELLED, last
    assert last.usage is None or last.usage.completion_tokens < 2000


def test_killed_worker_gives_unavailable_promptly(e2e):
    stub, name, _, worker = e2e  # last in this module: it kills the shared worker
    call = stub.GenerateStream(greedy(name, n=2000), timeout=60)
    next(c for c in call if c.text)
    worker.proc.send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE and "stopped" in info.value.details()
    assert time.monotonic() - t0 < 8
