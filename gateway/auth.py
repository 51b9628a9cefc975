"""Bearer-token check for every RPC except health and reflection (a server interceptor).

A call without `authorization: Bearer <token>` metadata, or with a token not in the gateway's
`TokenSet` (gateway/tokens.py), ends with UNAUTHENTICATED before the servicer runs; the rejecting
handler has the same streaming shape as the method it replaces.
"""

from __future__ import annotations

import grpc

from gateway.tokens import TokenSet

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _deny(message: str):
    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def stream(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator, as streaming handlers are

    return unary, stream


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Lets through calls whose bearer token is in `tokens` (compared in constant time, never logged)."""

    def __init__(self, tokens: TokenSet) -> None:
        self._tokens = tokens

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return handler
        problem = self._tokens.problem(handler_call_details.invocation_metadata)
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
