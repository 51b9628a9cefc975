"""A real gateway (grpc.aio on a free port) against a real Redis with a FakeWorker (before any worker:
test_service_no_worker.py).

FakeWorker is Redis data a worker would write (heartbeat, WorkerInfo, events) plus popping the real
Celery message off the queue, so dispatch, streaming, liveness and cancels run their real code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import redis

from gateway.api import pb, pb_grpc
from pipelines.protocol import (
    CANCEL_CHANNEL,
    ChoiceSummary,
    EventType,
    Usage,
    cancel_key,
    stream_key,
)
from tests.gateway.service_calls import (
    NOT_SERVING,
    SERVING,
    health_status,
    prompt,
    rpc_error,
    stream_events,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]


class CancelListener:
    """Collects request ids published on CANCEL_CHANNEL (subscribed before the test acts)."""

    def __init__(self, redis_url: str) -> None:
        self.redis = redis.Redis.from_url(redis_url)
        self.pubsub = self.redis.pubsub()
        self.pubsub.subscribe(CANCEL_CHANNEL)
        self.pubsub.get_message(timeout=2)  # the subscribe confirmation

    def seen(self, request_id: str, timeout: float) -> bool:
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            msg = self.pubsub.get_message(timeout=0.05)
            if msg and msg["type"] == "message" and msg["data"].decode() == request_id:
                return True
        return False

    def wait(self, request_id: str, timeout: float = 5.0) -> None:
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            msg = self.pubsub.get_message(timeout=0.2)
            if msg and msg["type"] == "message" and msg["data"].decode() == request_id:
                return
        raise AssertionError(f"no cancel published for {request_id} in {timeout} s")

    def close(self) -> None:
        self.pubsub.close()
        self.redis.close()


@pytest.fixture()
def cancels(redis_url):
    listener = CancelListener(redis_url)
    yield listener
    listener.close()


# ---- with a (fake) live worker -----------------------------------------------------------------
def test_health_and_models_follow_worker_heartbeats(start_gateway, channel_to, fake_worker, model):
    gw = start_gateway((model,), worker_dead_after_s=1.0)
    ch = channel_to(gw.address)
    worker = fake_worker(model, modalities=("text", "image"), max_model_len=1024, family="ming")
    wait_for(lambda: health_status(ch) == SERVING, 5, "health SERVING")
    assert health_status(ch, model) == SERVING and health_status(ch, "bailing.v1.Inference") == SERVING
    (info,) = pb_grpc.InferenceStub(ch).ListModels(pb.ListModelsRequest(), timeout=5).models
    assert (info.family, info.live_workers, info.max_model_len) == ("ming", 1, 1024)
    assert list(info.modalities) == ["text", "image"]
    worker.stop_heartbeat()
    wait_for(lambda: health_status(ch) == NOT_SERVING, 5, "health NOT_SERVING after the heartbeat stops")


def test_stream_relays_the_worker_events(start_gateway, channel_to, fake_worker, model):
    gw = start_gateway((model,))
    worker = fake_worker(model)
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    call = stub.GenerateStream(prompt(model, text="hi", request_id="s-1", priority=2), timeout=30)
    chunks: list[pb.GenerateChunk] = []
    reader = threading.Thread(target=lambda: chunks.extend(call))
    reader.start()
    job = worker.take_job()
    assert (job["request_id"], job["model"], job["prompt"], job["priority"]) == ("s-1", model, "hi", 2)
    assert 25 < job["deadline"] - job["submitted_at"] <= 30.5  # the call's deadline travels with the job
    worker.answer("s-1", text="hello world", reasoning="let me think")
    reader.join(10)
    assert [c.reasoning_text for c in chunks[:1]] == ["let me think"]
    assert "".join(c.text for c in chunks) == "hello world "
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage.completion_tokens == 2
    assert {c.request_id for c in chunks} == {"s-1"}


def test_admission_limit_then_unary_answer(start_gateway, channel_to, fake_worker, model):
    gw = start_gateway((model,), max_inflight=1)
    worker = fake_worker(model)
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    first = stub.Generate.future(prompt(model, request_id="adm-1"), timeout=30)
    assert worker.take_job()["request_id"] == "adm-1"
    err = rpc_error(stub.Generate, prompt(model), timeout=5)
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "max_inflight" in err.details()
    assert "1" in err.details()
    worker.answer("adm-1", text="fine thanks")
    resp = first.result(timeout=10)
    assert (resp.request_id, resp.model, resp.text, resp.finish_reason) == (
        "adm-1",
        model,
        "fine thanks ",
        "stop",
    )
    assert resp.usage.prompt_tokens == 3 and resp.timing.total_s >= resp.timing.time_to_first_token_s > 0
    assert resp.timing.queue_s > 0


def test_deadline_exceeded_publishes_a_cancel(
    start_gateway, channel_to, fake_worker, model, cancels, redis_url
):
    gw = start_gateway((model,))
    worker = fake_worker(model)
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    t0 = time.monotonic()
    err = rpc_error(stub.Generate, prompt(model, request_id="dl-1"), timeout=1.0)
    assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - t0 < 3
    cancels.wait("dl-1")
    assert redis.Redis.from_url(redis_url).exists(cancel_key("dl-1"))
    assert worker.take_job()["deadline"] is not None


# The client runs in its own process: gRPC does not support a sync client and a grpc.aio server
# in one process well, and there a client cancel sometimes never reached the server.
_CANCELLING_CLIENT = """
import sys, grpc
from gateway.api import pb, pb_grpc
address, model, rid = sys.argv[1:4]
with grpc.insecure_channel(address) as channel:
    call = pb_grpc.InferenceStub(channel).GenerateStream(
        pb.GenerateRequest(model=model, prompt="hello", request_id=rid), timeout=30
    )
    assert next(call).text == "partial"
    call.cancel()
"""


def test_client_cancel_of_an_idle_stream_publishes_a_cancel_at_once(
    start_gateway, fake_worker, model, cancels
):
    """The worker writes nothing after the first token: the cancel must come from the client's
    RST_STREAM alone. Before `dispatch.shielded`, redis-py swallowed it inside XREAD in 4 of 6 tries."""
    gw = start_gateway((model,))
    worker = fake_worker(model)
    for i in range(5):
        rid = f"cc-{i}"
        client = subprocess.Popen(
            [sys.executable, "-c", _CANCELLING_CLIENT, gw.address, model, rid], cwd=REPO
        )
        try:
            worker.take_job()
            worker.emit(rid, EventType.STARTED)
            worker.emit(rid, EventType.DELTA, text="partial")
            assert client.wait(timeout=30) == 0
            assert cancels.seen(rid, timeout=3.0), f"no cancel published for {rid} within 3 s"
        finally:
            client.kill()


def answer_three_samples(worker, request_id: str) -> None:
    """Interleaved deltas of choices 0..2 (choice 1 writes nothing), then the DONE with their summaries."""
    worker.emit(request_id, EventType.STARTED)
    for index, text in [(2, "c"), (0, "a"), (2, "C"), (0, "A")]:
        worker.emit(request_id, EventType.DELTA, index=index, text=text)
    choices = (ChoiceSummary(0, "stop", 2), ChoiceSummary(1, "length", 0), ChoiceSummary(2, "stop", 2))
    usage = Usage(prompt_tokens=3, completion_tokens=4)
    worker.emit(request_id, EventType.DONE, finish_reason="stop", usage=usage, choices=choices)


def test_unary_answer_of_three_samples(start_gateway, channel_to, fake_worker, model):
    gw = start_gateway((model,))
    worker = fake_worker(model)
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    future = stub.Generate.future(
        prompt(model, request_id="n3-1", sampling=pb.SamplingParams(n=3)), timeout=30
    )
    assert worker.take_job()["sampling"]["n"] == 3
    answer_three_samples(worker, "n3-1")
    resp = future.result(timeout=10)
    got = [(c.index, c.text, c.finish_reason, c.completion_tokens) for c in resp.choices]
    assert got == [(0, "aA", "stop", 2), (1, "", "length", 0), (2, "cC", "stop", 2)]
    assert (resp.text, resp.finish_reason, resp.usage.completion_tokens) == ("aA", "stop", 4)


def test_stream_of_three_samples(start_gateway, channel_to, fake_worker, model):
    gw = start_gateway((model,))
    worker = fake_worker(model)
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    call = stub.GenerateStream(prompt(model, request_id="n3-2", sampling=pb.SamplingParams(n=3)), timeout=30)
    chunks: list[pb.GenerateChunk] = []
    reader = threading.Thread(target=lambda: chunks.extend(call))
    reader.start()
    worker.take_job()
    answer_three_samples(worker, "n3-2")
    reader.join(10)
    assert [(c.index, c.text, c.finish_reason, c.HasField("usage")) for c in chunks] == [
        (2, "c", "", False), (0, "a", "", False), (2, "C", "", False), (0, "A", "", False),
        (0, "", "stop", False), (1, "", "length", False), (2, "", "stop", True),
    ]  # fmt: skip
    assert chunks[-1].usage.completion_tokens == 4


def test_worker_error_maps_to_its_status(start_gateway, channel_to, fake_worker, model):
    gw = start_gateway((model,))
    worker = fake_worker(model)
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    future = stub.Generate.future(prompt(model, request_id="err-1"), timeout=30)
    worker.take_job()
    worker.emit("err-1", EventType.STARTED)
    worker.emit(
        "err-1", EventType.ERROR, error_code="INVALID_ARGUMENT", message="prompt is 5000 tokens, limit 2048"
    )
    with pytest.raises(grpc.RpcError) as info:
        future.result(timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "prompt is 5000 tokens, limit 2048"


def test_corrupt_stream_is_internal_without_a_traceback(
    start_gateway, channel_to, fake_worker, model, redis_url
):
    gw = start_gateway((model,))
    worker = fake_worker(model)
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    future = stub.Generate.future(prompt(model, request_id="bad-1"), timeout=30)
    worker.take_job()
    redis.Redis.from_url(redis_url).xadd(stream_key("bad-1"), {"e": "{not json"})
    with pytest.raises(grpc.RpcError) as info:
        future.result(timeout=10)
    assert info.value.code() is grpc.StatusCode.INTERNAL
    assert info.value.details() == "internal error (see the gateway log for request bad-1)"


def test_validation_against_the_live_workers(start_gateway, channel_to, fake_worker, model):
    gw = start_gateway((model,))
    fake_worker(model, max_model_len=512)
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    err = rpc_error(stub.Generate, prompt(model, sampling=pb.SamplingParams(max_tokens=1000)), timeout=5)
    assert (
        err.code() is grpc.StatusCode.INVALID_ARGUMENT
        and "sampling.max_tokens must be <= 512" in err.details()
    )
    png = pb.Media(data=b"\x89PNG\r\n\x1a\n" + b"\0" * 16, mime_type="image/png")
    msg = pb.Message(role="user", content=[pb.ContentPart(image=png)])
    err = rpc_error(stub.Generate, pb.GenerateRequest(model=model, messages=[msg]), timeout=5)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"model {model!r} does not accept image input" in err.details()


def test_media_is_stored_and_referenced(start_gateway, channel_to, fake_worker, model, redis_url):
    gw = start_gateway((model,))
    worker = fake_worker(model, modalities=("text", "image"))
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    png = b"\x89PNG\r\n\x1a\n" + b"media-test" * 10
    msg = pb.Message(
        role="user", content=[pb.ContentPart(text="what?"), pb.ContentPart(image=pb.Media(data=png))]
    )
    future = stub.Generate.future(
        pb.GenerateRequest(model=model, messages=[msg], request_id="md-1"), timeout=30
    )
    job = worker.take_job()
    ref = job["messages"][0]["parts"][1]["media"]
    assert ref["mime_type"] == "image/png" and ref["size"] == len(png)
    r = redis.Redis.from_url(redis_url)
    assert r.get(ref["key"]) == png and r.ttl(ref["key"]) > 3000
    worker.answer("md-1")
    assert future.result(timeout=10).text == "hello world "


def test_duplicate_request_id_is_already_exists(start_gateway, channel_to, fake_worker, model):
    gw = start_gateway((model,))
    worker = fake_worker(model)
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    future = stub.Generate.future(prompt(model, request_id="dup-1"), timeout=30)
    worker.take_job()
    worker.answer("dup-1")
    future.result(timeout=10)
    err = rpc_error(stub.Generate, prompt(model, request_id="dup-1"), timeout=5)
    assert err.code() is grpc.StatusCode.ALREADY_EXISTS


def test_stale_worker_after_started_is_unavailable(start_gateway, channel_to, fake_worker, model, redis_url):
    gw = start_gateway((model,), worker_dead_after_s=1.0)
    worker = fake_worker(model)
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    future = stub.Generate.future(prompt(model, request_id="st-1"), timeout=30)
    worker.take_job()
    worker.emit("st-1", EventType.STARTED)
    worker.emit("st-1", EventType.DELTA, text="half")
    t0 = time.monotonic()
    worker.stop_heartbeat()
    with pytest.raises(grpc.RpcError) as info:
        future.result(timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert info.value.details().startswith(f"worker {worker.worker_id} stopped")
    assert time.monotonic() - t0 < 3.0
    events = stream_events(redis_url, "st-1")
    assert [e.type for e in events] == [EventType.STARTED, EventType.DELTA, EventType.ERROR]
    assert (events[-1].seq, events[-1].error_code) == (2, "UNAVAILABLE")  # a redelivery will be dropped


def test_all_workers_lost_before_started_is_unavailable(
    start_gateway, channel_to, fake_worker, model, redis_url
):
    gw = start_gateway((model,), worker_dead_after_s=1.0)
    worker = fake_worker(model)
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    future = stub.Generate.future(prompt(model, request_id="nl-1"), timeout=30)
    worker.take_job()
    worker.stop_heartbeat()
    with pytest.raises(grpc.RpcError) as info:
        future.result(timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "no live worker" in info.value.details()
    (event,) = stream_events(redis_url, "nl-1")
    assert (event.seq, event.type, event.error_code) == (0, EventType.ERROR, "UNAVAILABLE")


def test_request_log_line(start_gateway, channel_to, fake_worker, model, caplog):
    gw = start_gateway((model,))
    worker = fake_worker(model)
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    with caplog.at_level("INFO", logger="bailing.gateway.requests"):
        future = stub.Generate.future(prompt(model, request_id="log-1"), timeout=30)
        worker.take_job()
        worker.answer("log-1")
        future.result(timeout=10)
        wait_for(lambda: any("log-1" in r.message for r in caplog.records), 5, "the request log line")
    (line,) = [json.loads(r.message) for r in caplog.records if "log-1" in r.message]
    assert (line["id"], line["model"], line["status"], line["completion_tokens"]) == ("log-1", model, "OK", 2)
    assert line["worker"] == worker.worker_id and line["ttft_s"] is not None and line["total_s"] > 0


def test_error_mid_stream_ends_the_stream_with_its_status(start_gateway, channel_to, fake_worker, model):
    gw = start_gateway((model,))
    worker = fake_worker(model)
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    call = stub.GenerateStream(prompt(model, request_id="mid-1"), timeout=30)
    worker.take_job()
    worker.emit("mid-1", EventType.STARTED)
    worker.emit("mid-1", EventType.DELTA, text="so far")
    worker.emit("mid-1", EventType.ERROR, error_code="RESOURCE_EXHAUSTED", message="KV cache full")
    assert next(call).text == "so far"
    with pytest.raises(grpc.RpcError) as info:
        next(call)
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and info.value.details() == "KV cache full"


def test_overall_health_needs_every_model(start_gateway, channel_to, fake_worker, model):
    other = f"{model}-b"
    gw = start_gateway((model, other))
    ch = channel_to(gw.address)
    fake_worker(model)
    wait_for(lambda: health_status(ch, model) == SERVING, 5, f"{model} SERVING")
    assert health_status(ch, other) == NOT_SERVING
    assert health_status(ch, "bailing.v1.Inference") == SERVING  # some model can answer
    assert health_status(ch) == NOT_SERVING  # but not every one
    models = pb_grpc.InferenceStub(ch).ListModels(pb.ListModelsRequest(), timeout=5).models
    assert [(m.name, m.live_workers) for m in models] == [(model, 1), (other, 0)]
