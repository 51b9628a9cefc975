"""The service end to end: real Redis, `bailing gateway` and `bailing worker` subprocesses, real gRPC.

One gateway (with a bearer token) and one worker on the demo Ling checkpoint serve most tests;
the failure tests start and kill their own workers for a model name of their own.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.api import pb, pb_grpc
from pipelines.protocol import WORKER_DEAD_AFTER_S, Event, EventType, stream_key
from tests.service.procs import Processes

pytestmark = pytest.mark.slow
TOKEN = "e2e-secret"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def procs(redis_url, tmp_path_factory):
    running = Processes(redis_url, tmp_path_factory.mktemp("service-logs"), token=TOKEN)
    yield running
    running.close()


@pytest.fixture(scope="module")
def service(procs, demo_ling):
    """(address, worker) of a gateway serving "ling" with one live worker."""
    worker = procs.worker(demo_ling, "ling")
    address = procs.gateway("ling")
    _wait_health(address, SERVING)
    return address, worker


@pytest.fixture()
def stub(service):
    with grpc.insecure_channel(service[0]) as channel:
        yield pb_grpc.InferenceStub(channel)


def request(model: str = "ling", n: int = 8, rid: str | None = None, **sampling) -> pb.GenerateRequest:
    params = pb.SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, **sampling)
    return pb.GenerateRequest(
        model=model, prompt="The quick brown fox", sampling=params, request_id=rid or uuid.uuid4().hex
    )


def _health(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def _wait_health(address: str, status: int, timeout: float = 30.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if _health(address) == status:
            return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(f"health never became {status} in {timeout} s")


def _terminal(redis_url: str, rid: str, timeout: float = 20.0) -> Event:
    r = redis.Redis.from_url(redis_url)
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        entries = r.xrevrange(stream_key(rid), count=1)
        if entries and (event := Event.decode(entries[0][1])).terminal:
            return event
        time.sleep(0.05)
    raise AssertionError(f"no terminal event for {rid} in {timeout} s")


def _started_by(redis_url: str, rid: str, timeout: float = 20.0) -> str:
    r = redis.Redis.from_url(redis_url)
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        for _, fields in r.xrange(stream_key(rid)):
            event = Event.decode(fields)
            if event.type is EventType.STARTED:
                return event.worker_id
        time.sleep(0.05)
    raise AssertionError(f"{rid} never started")


# ---- calls -----------------------------------------------------------------------------------


def test_unary_and_streaming_agree(stub):
    resp = stub.Generate(request(n=12), metadata=AUTH, timeout=60)
    assert resp.finish_reason == "length" and resp.usage.completion_tokens == 12 and resp.text
    chunks = list(stub.GenerateStream(request(n=12), metadata=AUTH, timeout=60))
    assert "".join(c.text for c in chunks) == resp.text
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 12
    assert not any(c.finish_reason for c in chunks[:-1])


def test_32_concurrent_streams_complete_and_share_engine_steps(service):
    address, worker = service

    async def run() -> list[tuple[str, int]]:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.InferenceStub(channel)

            async def one(i: int) -> tuple[str, int]:
                text, usage = "", None
                async for chunk in stub.GenerateStream(request(n=48), metadata=AUTH, timeout=120):
                    text += chunk.text
                    usage = chunk.usage if chunk.finish_reason else usage
                return text, usage.completion_tokens

            return await asyncio.gather(*(one(i) for i in range(32)))

    results = asyncio.run(run())
    assert [n for _, n in results] == [48] * 32
    assert len({text for text, _ in results}) == 1  # greedy, same prompt: batching changed nothing
    time.sleep(1.5)  # the worker refreshes its gauges once a heartbeat
    assert worker.metric("bailing_worker_batch_size_max") >= 32


def test_cancelling_a_stream_frees_its_slot_within_one_step(stub, service, redis_url):
    rid = uuid.uuid4().hex
    call = stub.GenerateStream(request(n=3000, rid=rid), metadata=AUTH, timeout=120)
    next(c for c in call if c.text)
    call.cancel()
    event = _terminal(redis_url, rid)
    assert event.type is EventType.CANCELLED
    assert event.info["abort_step"] - event.info["cancel_seen_step"] <= 1, event.info
    assert stub.Generate(request(n=4), metadata=AUTH, timeout=60).usage.completion_tokens == 4


def test_deadline_is_deadline_exceeded_and_the_engine_aborts(stub, redis_url):
    rid = uuid.uuid4().hex
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(request(n=3000, rid=rid), metadata=AUTH, timeout=1.0)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    event = _terminal(redis_url, rid)
    assert (event.type is EventType.CANCELLED and event.usage is None) or event.usage.completion_tokens < 3000


# ---- bad input -------------------------------------------------------------------------------

_PNG_NAMED_JUNK = pb.Media(data=b"definitely not a png", mime_type="image/png")
BAD = {
    "unknown model": (dict(model="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
    "empty messages and prompt": (dict(prompt=""), grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
    "negative temperature": (
        dict(temperature=-1.0),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sampling.temperature",
    ),
    "top_p above 1": (dict(top_p=1.5), grpc.StatusCode.INVALID_ARGUMENT, "sampling.top_p"),
    "max_tokens 0": (dict(max_tokens=0), grpc.StatusCode.INVALID_ARGUMENT, "sampling.max_tokens"),
    "max_tokens above the limit": (
        dict(max_tokens=10**7),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sampling.max_tokens",
    ),
    "undecodable media": (dict(image=_PNG_NAMED_JUNK), grpc.StatusCode.INVALID_ARGUMENT, "image"),
    "oversized message": (dict(prompt="x" * (40 << 20)), grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than"),
}


def _bad_request(change: dict) -> pb.GenerateRequest:
    req = request()
    if "model" in change:
        req.model = change["model"]
    if "prompt" in change:
        req.prompt = change["prompt"]
    if "image" in change:
        req.prompt = ""
        req.messages.append(pb.Message(role="user", content=[pb.ContentPart(image=change["image"])]))
    for field in ("temperature", "top_p", "max_tokens"):
        if field in change:
            setattr(req.sampling, field, change[field])
    return req


def test_bad_inputs_get_the_right_status_and_the_worker_keeps_serving(stub):
    long_stream = stub.GenerateStream(request(n=200), metadata=AUTH, timeout=120)
    collected: list = []
    reader = threading.Thread(target=lambda: collected.extend(long_stream))
    reader.start()
    for name, (change, code, needle) in BAD.items():
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(_bad_request(change), metadata=AUTH, timeout=30)
        assert info.value.code() is code, (name, info.value.details())
        assert needle in info.value.details(), (name, info.value.details())
    for metadata, why in ((None, "missing"), ((("authorization", "Bearer wrong"),), "wrong")):
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(request(), metadata=metadata, timeout=30)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED, why
        assert "token" in info.value.details().lower()
    reader.join(120)
    assert collected[-1].finish_reason == "length" and collected[-1].usage.completion_tokens == 200
    assert stub.Generate(request(n=4), metadata=AUTH, timeout=60).usage.completion_tokens == 4


# ---- health, reflection, worker failure --------------------------------------------------------


def test_reflection_lists_the_services(service):
    with grpc.insecure_channel(service[0]) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        query = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([query]), timeout=10))
    names = {s.name for s in reply.list_services_response.service}
    assert {"bailing.v1.Inference", "grpc.health.v1.Health"} <= names


def test_worker_loss_and_restart(procs, demo_ling, redis_url):
    """Health follows the workers; a SIGKILLed worker fails only its own streams, promptly."""
    model = f"flip-{uuid.uuid4().hex[:6]}"
    address = procs.gateway(model)
    assert _health(address) != SERVING
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.InferenceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(request(model), metadata=AUTH, timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE and model in info.value.details()

        a = procs.worker(demo_ling, model, "--max-num-seqs", "8")
        b = procs.worker(demo_ling, model, "--max-num-seqs", "8")
        _wait_health(address, SERVING)
        streams = {}
        for _ in range(16):  # more than one worker's 8 slots: both take work even if b consumes late
            rid = uuid.uuid4().hex
            streams[rid] = stub.GenerateStream(request(model, n=400, rid=rid), metadata=AUTH, timeout=120)
        owners = {rid: _started_by(redis_url, rid) for rid in streams}
        assert set(owners.values()) == {a.worker_id, b.worker_id}, "both workers should have taken work"
        a.kill()
        t0 = time.monotonic()
        for rid, call in streams.items():
            if owners[rid] == a.worker_id:
                with pytest.raises(grpc.RpcError) as info:
                    list(call)
                assert info.value.code() is grpc.StatusCode.UNAVAILABLE, info.value.details()
                assert time.monotonic() - t0 < WORKER_DEAD_AFTER_S + 4
        for rid, call in streams.items():
            if owners[rid] == b.worker_id:
                assert list(call)[-1].usage.completion_tokens == 400  # not lost
        assert stub.Generate(request(model, n=4), metadata=AUTH, timeout=60).usage.completion_tokens == 4

        b.kill()
        assert _wait_health(address, health_pb2.HealthCheckResponse.NOT_SERVING) < WORKER_DEAD_AFTER_S + 3
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(request(model), metadata=AUTH, timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE

        procs.worker(demo_ling, model)
        _wait_health(address, SERVING)
        assert stub.Generate(request(model, n=4), metadata=AUTH, timeout=60).usage.completion_tokens == 4


WEATHER = json.dumps(
    {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 8}},
        "required": ["city"],
        "additionalProperties": False,
    }
)


def _chat(*messages: pb.Message, **kw) -> pb.GenerateRequest:
    tools = [pb.Tool(type="function", function=pb.FunctionDefinition(name="get_weather", parameters=WEATHER))]
    sampling = pb.SamplingParams(max_tokens=96, temperature=1.0, seed=3)
    kw.setdefault("parallel_tool_calls", False)  # random weights would chain calls up to max_tokens
    return pb.GenerateRequest(model="ling", messages=list(messages), tools=tools, sampling=sampling, **kw)


def test_tool_call_round_trip_over_grpc(stub):
    """call -> tool result -> answer: the forced call validates, its id survives the round trip, and
    the second turn (tools shown, auto) answers after the tool's result."""
    ask = pb.Message(role="user", content=[pb.ContentPart(text="Weather in Oslo?")])
    first = stub.Generate(_chat(ask, tool_choice=pb.ToolChoice(mode="required")), metadata=AUTH, timeout=60)
    assert first.finish_reason == "tool_calls" and first.text == ""
    (call,) = first.tool_calls
    assert call.name == "get_weather" and call.id and set(json.loads(call.arguments)) == {"city"}
    assert list(first.choices[0].tool_calls) == [call]
    streamed = list(
        stub.GenerateStream(_chat(ask, tool_choice=pb.ToolChoice(mode="required")), metadata=AUTH, timeout=60)
    )
    calls = [c for chunk in streamed for c in chunk.tool_calls]
    assert [(c.name, c.arguments) for c in calls] == [(call.name, call.arguments)]  # same seed, same call
    assert streamed[-1].finish_reason == "tool_calls"
    turn = pb.Message(role="assistant", tool_calls=[call])
    result = pb.Message(role="tool", tool_call_id=call.id, content=[pb.ContentPart(text='{"celsius": 3}')])
    fmt = pb.ResponseFormat(type="json_object")
    answer = stub.Generate(
        _chat(ask, turn, result, response_format=fmt, tool_choice=pb.ToolChoice(mode="none")),
        metadata=AUTH,
        timeout=60,
    )
    assert answer.finish_reason == "stop" and isinstance(json.loads(answer.text), dict)


def test_bad_schema_is_refused_before_any_work(stub):
    fmt = pb.ResponseFormat(type="json_schema", json_schema=pb.JsonSchema(schema='{"type": 7}'))
    ask = pb.Message(role="user", content=[pb.ContentPart(text="x")])
    with pytest.raises(grpc.RpcError) as caught:
        stub.Generate(_chat(ask, response_format=fmt), metadata=AUTH, timeout=30)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "response_format.json_schema.schema" in caught.value.details()
