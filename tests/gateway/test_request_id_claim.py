"""A client-chosen request_id is claimed in one Redis operation: of many concurrent calls with one id,
exactly one is accepted (real gateway, real Redis, the fake worker popping the real Celery message)."""

from __future__ import annotations

import grpc
import redis

from gateway.api import pb, pb_grpc
from pipelines.protocol import FINISHED_STREAM_TTL_S, claim_key, queue_name

CALLS = 50


def test_concurrent_calls_with_one_id_accept_exactly_one(
    start_gateway, channel_to, fake_worker, model, redis_url
):
    gw = start_gateway((model,))
    worker = fake_worker(model)
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    rid = f"race-{model}"
    futures = [
        stub.Generate.future(pb.GenerateRequest(model=model, prompt="hi", request_id=rid), timeout=30)
        for _ in range(CALLS)
    ]
    job = worker.take_job()
    assert job["request_id"] == rid
    worker.answer(rid)
    codes = []
    for f in futures:
        try:
            f.result(timeout=20)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as err:
            codes.append(err.code())
            assert err.code() is not grpc.StatusCode.ALREADY_EXISTS or rid in err.details()
    assert codes.count(grpc.StatusCode.OK) == 1, codes
    assert codes.count(grpc.StatusCode.ALREADY_EXISTS) == CALLS - 1, codes
    r = redis.Redis.from_url(redis_url)
    assert r.llen(queue_name(model)) == 0  # no second task was sent
    assert 0 < r.ttl(claim_key(rid)) <= FINISHED_STREAM_TTL_S  # taken until shortly after its end


def test_ids_of_streams_from_before_claims_are_still_refused(start_gateway, channel_to, fake_worker, model):
    """A stream that exists without a claim (an older gateway's request) keeps its id taken."""
    gw = start_gateway((model,))
    worker = fake_worker(model)
    rid = f"old-{model}"
    worker.answer(rid)  # the stream exists, no claim key
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    try:
        stub.Generate(pb.GenerateRequest(model=model, prompt="hi", request_id=rid), timeout=10)
    except grpc.RpcError as err:
        assert err.code() is grpc.StatusCode.ALREADY_EXISTS
    else:
        raise AssertionError("a request reusing a live stream's id was accepted")


def test_generated_ids_need_no_claim(start_gateway, channel_to, fake_worker, model, redis_url):
    gw = start_gateway((model,))
    worker = fake_worker(model)
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    future = stub.Generate.future(pb.GenerateRequest(model=model, prompt="hi"), timeout=30)
    rid = worker.take_job()["request_id"]
    worker.answer(rid)
    assert future.result(timeout=10).request_id == rid
    assert not redis.Redis.from_url(redis_url).exists(claim_key(rid))
