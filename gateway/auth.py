"""Bearer-token check for every RPC except health and reflection (a server interceptor).

A call without `authorization: Bearer <token>` metadata, or with another token, ends with
UNAUTHENTICATED before the servicer runs; the rejecting handler has the same streaming shape as
the method it replaces.
"""

from __future__ import annotations

import hmac

import grpc

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _deny(message: str):
    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def stream(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator, as streaming handlers are

    return unary, stream


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def _check(self, metadata) -> str | None:
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if not values:
            return "missing authorization metadata: send 'authorization: Bearer <token>'"
        value = values[0].encode() if isinstance(values[0], str) else values[0]
        if not hmac.compare_digest(value, self._expected):
            return "invalid bearer token"
        return None

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return handler
        problem = self._check(handler_call_details.invocation_metadata)
        if problem is None:
            return handler
        unary, stream = _deny(problem)
        args = {"request_deserializer": None, "response_serializer": None}
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(unary, **args)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(stream, **args)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(unary, **args)
        return grpc.stream_stream_rpc_method_handler(stream, **args)
