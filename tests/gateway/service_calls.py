"""Helpers of the gateway service tests (test_service.py, test_service_no_worker.py, test_tokens.py): a
prompt request, the health status, waiting for a condition, a request's events in Redis, an RPC's
error."""

from __future__ import annotations

import time

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.api import pb
from pipelines.protocol import Event, stream_key

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def prompt(model: str, **kw) -> pb.GenerateRequest:
    return pb.GenerateRequest(model=model, prompt=kw.pop("text", "hello"), **kw)


def health_status(channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stream_events(redis_url: str, request_id: str) -> list[Event]:
    r = redis.Redis.from_url(redis_url)
    try:
        return [Event.decode(fields) for _, fields in r.xrange(stream_key(request_id))]
    finally:
        r.close()


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value
