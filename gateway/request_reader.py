"""`RequestReader`: the server interceptor that reads the request of every unary-request RPC of
bailing.v1 itself, so a call whose bytes are not exactly one parseable message ends with
INVALID_ARGUMENT and a one-line reason.

Without it grpc.aio answers a request that does not parse (a string field that is not UTF-8, corrupt
wire format) with UNKNOWN and the parser's exception text, and never answers at all a call that
half-closes without a complete message (no DATA, a length prefix longer than the bytes that follow):
the client hangs until its deadline. Here each such method is served as request-streaming (the same
bytes on the wire): the handler takes the request stream, checks it holds exactly one message that
parsed, and hands that message to the servicer's method unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

SERVICE_PREFIX = "/bailing.v1."  # health and reflection keep grpc's own handling


@dataclass(frozen=True)
class Unparsed:
    """What the deserializer returns for bytes that do not parse (grpc would raise)."""

    reason: str


def _parse_or_report(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as exc:
            return Unparsed(str(exc))

    return parse


async def only_request(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
    """The one message of a unary call; INVALID_ARGUMENT for none, several, or one that did not parse."""
    request, count = None, 0
    async for message in requests:
        count += 1
        if count > 1:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the call sent more than one request message (it takes one)"
            )
        request = message
    if count == 0:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            "the call ended without a complete request message (none sent, or its bytes cut short)",
        )
    if isinstance(request, Unparsed):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request does not parse: {request.reason}")
    return request


def _unary_unary(behavior):
    async def handle(requests, context):
        return await behavior(await only_request(requests, context), context)

    return handle


def _unary_stream(behavior):
    async def handle(requests, context):
        request = await only_request(requests, context)
        async with contextlib.aclosing(behavior(request, context)) as replies:  # its finally runs on cancel
            async for reply in replies:
                yield reply

    return handle


class RequestReader(grpc.aio.ServerInterceptor):
    """Serves bailing.v1's unary-request methods as request-streaming ones checked by `only_request`."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or handler.request_streaming
            or handler.request_deserializer is None
            or not handler_call_details.method.startswith(SERVICE_PREFIX)
        ):
            return handler
        args = {
            "request_deserializer": _parse_or_report(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.stream_unary_rpc_method_handler(_unary_unary(handler.unary_unary), **args)
        return grpc.stream_stream_rpc_method_handler(_unary_stream(handler.unary_stream), **args)
