"""The gateway in front of a real `bailing worker` on the demo Ling checkpoint (Redis + Celery, no fakes)."""

from __future__ import annotations

import http.client
import json
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
def served(redis_url, demo_ling, tmp_path_factory):
    """(gateway thread, model name, worker): a gateway (gRPC + HTTP) + one real worker, for this module."""
    if not (REPO / "workers" / "app.py").is_file():
        pytest.skip("workers/ is not there yet")
    from gateway.config import GatewayConfig
    from tests.gateway.conftest import GatewayThread

    name = f"ling-e2e-{uuid.uuid4().hex[:6]}"
    worker = Worker(redis_url, demo_ling, name, tmp_path_factory.mktemp("e2e") / "worker.log")
    gw = None
    try:
        worker.wait_registered()
        cfg = GatewayConfig(redis_url=redis_url, models=(name,), port=0, http_port=0)
        gw = GatewayThread(cfg).start()
        yield gw, name, worker
    finally:
        if gw is not None:
            gw.stop()
        worker.close()


@pytest.fixture(scope="module")
def e2e(served, redis_url):
    """(stub, model name, redis_url, worker) over the module's gateway."""
    gw, name, worker = served
    with grpc.insecure_channel(gw.address) as channel:
        yield pb_grpc.InferenceStub(channel), name, redis_url, worker


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


# ---- logprobs ------------------------------------------------------------------------------------
def seeded(model: str, **sampling) -> pb.GenerateRequest:
    sampling = pb.SamplingParams(
        **{"max_tokens": 8, "temperature": 1.0, "seed": 7, "ignore_eos": True, **sampling}
    )
    return pb.GenerateRequest(model=model, prompt="The quick brown fox", sampling=sampling)


def test_logprobs_cover_every_token_and_are_the_engine_s(e2e, demo_ling):
    from engine.llm import LLM
    from engine.sampling_params import SamplingParams

    stub, name, _, _ = e2e
    resp = stub.Generate(seeded(name, logprobs=3), timeout=60)
    lps = resp.choices[0].logprobs
    assert len(lps) == resp.usage.completion_tokens == 8 and resp.logprobs == lps
    for t in lps:
        top = [a.logprob for a in t.top]
        assert len(top) == 3 and top == sorted(top, reverse=True) and t.logprob <= top[0] <= 0
        assert all(a.logprob == t.logprob for a in t.top if a.token_id == t.token_id)
    params = SamplingParams(max_tokens=8, temperature=1.0, seed=7, ignore_eos=True, logprobs=3)
    (ref,) = LLM(demo_ling, kv_cache_bytes=16 << 20).generate(["The quick brown fox"], params)
    assert [t.token_id for t in lps] == ref.token_ids
    for t, want in zip(lps, ref.logprobs, strict=True):
        assert t.logprob == pytest.approx(want[t.token_id], abs=1e-5)
        assert [a.token_id for a in t.top] == list(want)[:3]


def test_streamed_logprobs_concatenate_to_the_unary_ones(e2e):
    stub, name, _, _ = e2e
    unary = stub.Generate(seeded(name, logprobs=2, n=2), timeout=60)
    chunks = list(stub.GenerateStream(seeded(name, logprobs=2, n=2), timeout=60))
    for i in (0, 1):
        streamed = [t for c in chunks if c.index == i for t in c.logprobs]
        assert len(streamed) == 8 and _close(streamed, unary.choices[i].logprobs)
    plain = stub.Generate(seeded(name), timeout=60)
    assert not plain.logprobs and not plain.choices[0].logprobs


def test_logprobs_over_http_have_openai_s_shapes(served):
    gw, name, _ = served
    base = {"model": name, "max_tokens": 6, "temperature": 1.0, "seed": 3, "ignore_eos": True}
    chat = {**base, "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 2}
    unary = _post(gw, "/v1/chat/completions", chat)
    content = unary["choices"][0]["logprobs"]["content"]
    assert len(content) == unary["usage"]["completion_tokens"] == 6
    for t in content:
        assert set(t) == {"token", "logprob", "bytes", "top_logprobs"} and len(t["top_logprobs"]) == 2
        assert bytes(t["bytes"]).decode(errors="replace") == t["token"]
    frames = _post(gw, "/v1/chat/completions", {**chat, "stream": True})
    streamed = [t for f in frames for c in f["choices"] if c["logprobs"] for t in c["logprobs"]["content"]]
    assert _close(streamed, content)
    text = _post(gw, "/v1/completions", {**base, "prompt": "The quick brown fox", "logprobs": 2})
    (choice,) = text["choices"]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 6
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(6)]
    assert all(
        1 <= len(top) <= 3 and top[t] == v  # two alternatives may share a text (U+FFFD)
        for top, t, v in zip(lp["top_logprobs"], lp["tokens"], lp["token_logprobs"], strict=True)
    )
    assert _post(gw, "/v1/completions", {**base, "prompt": "x"})["choices"][0]["logprobs"] is None


def _close(got, want) -> bool:
    """Same tokens and alternatives, logprobs equal up to float32 rounding (the second of two calls may
    take its prompt's KV from the prefix cache, computed in another shape), as pb messages or dicts."""

    def flat(t):
        if isinstance(t, dict):
            return (t["token"], bytes(t["bytes"])), t["logprob"], [flat(a) for a in t.get("top_logprobs", ())]
        return (t.token_id, t.token, t.bytes), t.logprob, [flat(a) for a in getattr(t, "top", ())]

    def same(a, b) -> bool:
        return (
            a[0] == b[0]
            and a[1] == pytest.approx(b[1], abs=1e-5)
            and len(a[2]) == len(b[2])
            and all(same(x, y) for x, y in zip(a[2], b[2], strict=True))
        )

    return len(got) == len(want) and all(same(flat(a), flat(b)) for a, b in zip(got, want, strict=True))


def _post(gw, path: str, body: dict):
    """The JSON reply of a POST to the gateway's HTTP port (a stream: its chunks, without [DONE])."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.gateway.http_port, timeout=60)
    conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    assert resp.status == 200, payload
    if not body.get("stream"):
        return json.loads(payload)
    frames = [line[len(b"data: ") :] for line in payload.split(b"\n\n") if line]
    assert frames[-1] == b"[DONE]"
    return [json.loads(f) for f in frames[:-1]]


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
