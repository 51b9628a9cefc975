"""A real gateway (grpc.aio on a free port) against a real Redis before any worker is there: unknown
models, no live worker (UNAVAILABLE, NOT_SERVING), argument errors first, reflection, bearer tokens,
the message size limit and the metrics endpoint. The calls with a (fake) worker: test_service.py."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.api import pb, pb_grpc
from tests.gateway.service_calls import NOT_SERVING, health_status, prompt, rpc_error


# ---- no worker ---------------------------------------------------------------------------------
def test_unknown_model_is_not_found(start_gateway, channel_to, model):
    gw = start_gateway((model,))
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    err = rpc_error(stub.Generate, prompt("nope"), timeout=5)
    assert err.code() is grpc.StatusCode.NOT_FOUND and "'nope'" in err.details()
    err = rpc_error(lambda: list(stub.GenerateStream(prompt("nope"), timeout=5)))
    assert err.code() is grpc.StatusCode.NOT_FOUND


def test_an_error_quoting_a_huge_value_still_reaches_the_client(start_gateway, channel_to, model):
    """Found by `make fuzz`: a 20,000-character model name made the NOT_FOUND message larger than gRPC
    clients accept in trailers; the client got RESOURCE_EXHAUSTED "received metadata size exceeds
    hard limit" instead. Messages are clipped in the middle (gateway/errors.py `clip`)."""
    gw = start_gateway((model,))
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    err = rpc_error(stub.Generate, prompt("é" * 100_000), timeout=5)
    assert err.code() is grpc.StatusCode.NOT_FOUND, err.details()
    details = err.details()
    assert len(details.encode()) <= 2100 and "bytes cut" in details
    assert details.startswith("model 'éé") and details.endswith(f"(served: {model})")


def test_no_worker_is_unavailable_and_not_serving(start_gateway, channel_to, model):
    gw = start_gateway((model,))
    ch = channel_to(gw.address)
    stub = pb_grpc.InferenceStub(ch)
    err = rpc_error(stub.Generate, prompt(model), timeout=5)
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert err.details() == f"no live worker serves model {model!r}"
    assert health_status(ch) == NOT_SERVING
    assert health_status(ch, model) == NOT_SERVING
    assert health_status(ch, "bailing.v1.Inference") == NOT_SERVING
    (info,) = stub.ListModels(pb.ListModelsRequest(), timeout=5).models
    assert (info.name, info.live_workers, info.max_model_len, list(info.modalities)) == (model, 0, 0, [])


def test_bad_argument_beats_no_worker(start_gateway, channel_to, model):
    gw = start_gateway((model,))
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    err = rpc_error(stub.Generate, prompt(model, sampling=pb.SamplingParams(top_p=2)), timeout=5)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "sampling.top_p" in err.details()


def test_reflection_lists_the_services(start_gateway, channel_to, model):
    gw = start_gateway((model,), api_token="s3cret")  # reflection is exempt from the token
    stub = reflection_pb2_grpc.ServerReflectionStub(channel_to(gw.address))
    (resp,) = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for s in resp.list_services_response.service}
    assert names == {
        "bailing.v1.Inference",
        "bailing.v1.Jobs",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    req = reflection_pb2.ServerReflectionRequest(file_containing_symbol="bailing.v1.Inference")
    (resp,) = stub.ServerReflectionInfo(iter([req]), timeout=5)
    assert resp.file_descriptor_response.file_descriptor_proto  # clients can fetch the schema


def test_bearer_token(start_gateway, channel_to, model):
    gw = start_gateway((model,), api_token="s3cret")
    ch = channel_to(gw.address)
    stub = pb_grpc.InferenceStub(ch)
    err = rpc_error(stub.ListModels, pb.ListModelsRequest(), timeout=5)
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED and "authorization" in err.details()
    err = rpc_error(
        stub.ListModels, pb.ListModelsRequest(), timeout=5, metadata=[("authorization", "Bearer no")]
    )
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    err = rpc_error(lambda: list(stub.GenerateStream(prompt(model), timeout=5)))
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    good = [("authorization", "Bearer s3cret")]
    assert stub.ListModels(pb.ListModelsRequest(), timeout=5, metadata=good).models[0].name == model
    err = rpc_error(stub.Generate, prompt(model), timeout=5, metadata=good)
    assert err.code() is grpc.StatusCode.UNAVAILABLE  # past the interceptor: no worker
    assert health_status(ch) == NOT_SERVING  # health needs no token


def test_oversized_message_is_resource_exhausted(start_gateway, channel_to, model):
    gw = start_gateway((model,), max_message_bytes=1024 * 1024)
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    err = rpc_error(stub.Generate, prompt(model, text="x" * (2 * 1024 * 1024)), timeout=10)
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_metrics_endpoint(start_gateway, channel_to, model, free_port):
    gw = start_gateway((model,), metrics_port=free_port)
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    rpc_error(stub.Generate, prompt(model), timeout=5)
    body = urllib.request.urlopen(f"http://127.0.0.1:{free_port}/metrics", timeout=5).read().decode()
    line = f'bailing_gateway_requests_total{{code="UNAVAILABLE",method="Generate",model="{model}"}} 1.0'
    assert line in body
    for name in ("queue_depth", "inflight_requests", "time_to_first_token_seconds", "inter_token_latency"):
        assert f"bailing_gateway_{name}" in body


@pytest.fixture()
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
