"""Calls that do not carry one parseable request get INVALID_ARGUMENT (gateway/request_reader.py).

Found by `make fuzz`: grpc.aio answered bytes that do not parse with UNKNOWN and the parser's
exception text, and never answered a unary call that half-closed without a complete message (the
client hung until its deadline). Sent here as raw bytes through a gRPC channel, and as raw HTTP/2
frames (the `h2` package) for what no gRPC client library sends.
"""

from __future__ import annotations

import time

import grpc
import pytest

from gateway.api import pb, pb_grpc
from tests.fuzz.wire import H2Case, at_path, grpc_frame, h2_exchange

GENERATE = "/bailing.v1.Inference/Generate"
IDENTITY = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}


@pytest.fixture()
def gateway(start_gateway, model):
    return start_gateway((model,))


def call(channel, method: str, data: bytes, stream: bool = False) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        if stream:
            list(channel.unary_stream(method, **IDENTITY)(data, timeout=10))
        else:
            channel.unary_unary(method, **IDENTITY)(data, timeout=10)
    return info.value


@pytest.mark.parametrize(
    ("method", "stream", "data"),
    [
        (GENERATE, False, at_path((3,), b"\xc3\x28")),  # prompt: not UTF-8
        ("/bailing.v1.Inference/GenerateStream", True, at_path((2, 1), b"\xff")),  # messages[0].role
        ("/bailing.v1.Jobs/GetBatch", False, at_path((1,), b"a\x80b")),
        ("/bailing.v1.Jobs/GetBatchResults", True, at_path((1,), b"\xed\xa0\x80")),
        (GENERATE, False, b"\xff\xff\xff\xff"),  # corrupt wire format
        ("/bailing.v1.Inference/ListModels", False, b"\x08"),  # a varint cut short
    ],
)
def test_a_request_that_does_not_parse_is_invalid_argument(gateway, channel_to, method, stream, data):
    err = call(channel_to(gateway.address), method, data, stream)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert err.details().startswith("the request does not parse: ") and "Traceback" not in err.details()


def test_a_parseable_request_still_reaches_the_servicer(gateway, channel_to, model):
    stub = pb_grpc.InferenceStub(channel_to(gateway.address))
    (info,) = stub.ListModels(pb.ListModelsRequest(), timeout=5).models
    assert info.name == model
    with pytest.raises(grpc.RpcError) as err:
        list(stub.GenerateStream(pb.GenerateRequest(model=model, prompt="hi"), timeout=5))
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE  # validated, then: no worker


MESSAGE = pb.GenerateRequest(model="m", prompt="hello").SerializeToString()


@pytest.mark.parametrize(
    ("frames", "expect"),
    [
        ((), "without a complete request message"),  # HEADERS with END_STREAM, no DATA
        ((grpc_frame(MESSAGE)[:3],), "without a complete request message"),  # a cut length prefix
        ((grpc_frame(MESSAGE, len(MESSAGE) + 50),), "without a complete request message"),  # lies
        ((grpc_frame(MESSAGE), grpc_frame(MESSAGE)), "more than one request message"),
    ],
)
@pytest.mark.parametrize("path", [GENERATE, "/bailing.v1.Inference/GenerateStream"])
def test_a_call_without_exactly_one_message_is_answered_at_once(gateway, frames, expect, path):
    case = H2Case(path, (("content-type", "application/grpc"),), frames, True, "test")
    started = time.monotonic()
    answer = h2_exchange(gateway.address, case, timeout_s=10)
    assert (answer.status, answer.timed_out) == ("INVALID_ARGUMENT", False), answer
    assert expect in answer.message and time.monotonic() - started < 5
