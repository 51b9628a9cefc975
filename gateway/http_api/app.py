"""The HTTP routes (Starlette) and `HttpFrontDoor`, which serves them with uvicorn in the gateway's loop.

Flow of a call: size limit (413) -> bearer token, as the gRPC interceptor checks it (401) -> body ->
the GenerateRequest (400 naming the field) -> the gateway's servicer with an `HttpCallContext` ->
OpenAI's reply, or server-sent events. A streamed call takes its first chunk before answering, so a
request refused by admission or validation gets its own HTTP status, not a 200 with an error event;
an error after the first chunk is sent as an `error` event. A client that disconnects ends the
HTTP call's context: the servicer's done callback cancels the request in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api import pb
from gateway.http_api.context import CallAborted, HttpCallContext
from gateway.http_api.errors import HttpError, from_status
from gateway.http_api.fields import parse_body
from gateway.http_api.replies import DONE, ChunkWriter, chat_completion, completion, sse
from gateway.http_api.requests import chat_request, completion_request

log = logging.getLogger(__name__)


class OpenAIRoutes:
    """The endpoints over one servicer (gateway.server.InferenceServicer) and its token set."""

    def __init__(self, servicer: Any, max_body_bytes: int) -> None:
        self.servicer, self.max_body_bytes = servicer, max_body_bytes

    def app(self) -> Starlette:
        routes = [
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ]
        handlers = {HttpError: _http_error, HTTPException: _http_exception, Exception: _unexpected}
        return Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]

    async def models(self, request: Request) -> Response:
        ctx = self._context(request)
        reply = await self._unary(request, ctx, self.servicer.ListModels(pb.ListModelsRequest(), ctx))
        data = [
            {
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": "bailing",
                "family": m.family,
                "max_model_len": m.max_model_len,
                "live_workers": m.live_workers,
                "modalities": list(m.modalities),
                "outputs": list(m.outputs),
            }
            for m in reply.models
        ]
        return JSONResponse({"object": "list", "data": data})

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, chat_request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, completion_request, chat=False)

    # ---- one call ----------------------------------------------------------------------------
    async def _generate(self, request: Request, read: Callable[..., Any], chat: bool) -> Response:
        ctx = self._context(request)
        req, stream, include_usage = read(parse_body(await self._body(request)))
        if not stream:
            reply = await self._unary(request, ctx, self.servicer.Generate(req, ctx))
            return JSONResponse(chat_completion(reply) if chat else completion(reply))
        chunks = self.servicer.GenerateStream(req, ctx)
        try:  # admission and validation run up to the first chunk: their errors get their own status
            first = await self._unary(request, ctx, _first(chunks), end=False)
        except BaseException:
            ctx.end()
            await chunks.aclose()
            raise
        writer = ChunkWriter(req.model, chat, include_usage)
        return EventStream(_frames(chunks, first, writer, ctx))

    def _context(self, request: Request) -> HttpCallContext:
        """The call's context, after the same bearer-token check the gRPC interceptor makes."""
        authorization = request.headers.get("authorization")
        tokens = self.servicer.tokens
        if tokens:
            problem = tokens.problem([("authorization", authorization)] if authorization else [])
            if problem:
                raise HttpError(401, problem.replace("metadata", "header"), kind="authentication_error")
        return HttpCallContext(authorization)

    async def _body(self, request: Request) -> bytes:
        too_big = HttpError(413, f"the request body is over {self.max_body_bytes} bytes")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise too_big
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > self.max_body_bytes:
                raise too_big
        return bytes(body)

    async def _unary(self, request: Request, ctx: HttpCallContext, call: Any, end: bool = True) -> Any:
        """Await a servicer call; a client that disconnects first cancels it (499, nobody reads it)."""
        task = asyncio.ensure_future(call)
        gone = asyncio.ensure_future(_disconnected(request.receive))
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                task.cancel()
                ctx.end()  # the servicer's done callback cancels the request
                with contextlib.suppress(asyncio.CancelledError, CallAborted):
                    await task
                raise HttpError(499, "the client closed the request", kind="cancelled_error")
            try:
                return task.result()
            except CallAborted as exc:
                raise from_status(exc.code, exc.message) from None
        finally:
            gone.cancel()
            if end:
                ctx.end()


class EventStream(Response):
    """Server-sent events from `frames`; a client that disconnects, even while no frame is due, closes
    `frames` at once (which ends the call and so cancels the request)."""

    media_type = "text/event-stream"

    def __init__(self, frames: AsyncIterator[bytes]) -> None:  # no body: no content-length header
        self.status_code, self.background, self.frames = 200, None, frames
        self.init_headers({"Cache-Control": "no-cache"})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        sending = asyncio.ensure_future(self._send_all(send))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({sending, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sending, gone):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sending
            await self.frames.aclose()

    async def _send_all(self, send: Any) -> None:
        async for frame in self.frames:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _first(chunks: AsyncIterator[Any]) -> Any:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None


async def _frames(chunks: Any, first: Any, writer: ChunkWriter, ctx: HttpCallContext) -> AsyncIterator[bytes]:
    """The stream's SSE frames; an error after the first chunk is an `error` event."""
    try:
        if first is not None:
            for frame in writer.events(first):
                yield frame
        async for chunk in chunks:
            for frame in writer.events(chunk):
                yield frame
        yield DONE
    except CallAborted as exc:
        yield sse(from_status(exc.code, exc.message).body())
        yield DONE
    finally:
        ctx.end()
        await chunks.aclose()


async def _disconnected(receive: Any) -> None:
    """Returns once the client has gone (after the body was read, receive() waits for that)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return HttpError(
        exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", kind=kind
    ).response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    return exc.response()


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("HTTP %s %s: internal error", request.method, request.url.path)
    return HttpError(500, "internal error (see the gateway log)", kind="server_error").response()


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield  # the gateway process owns SIGTERM / SIGINT (its drain), not uvicorn


class HttpFrontDoor:
    """uvicorn serving `OpenAIRoutes` on (host, port) inside the running event loop."""

    def __init__(self, routes: OpenAIRoutes, host: str, port: int, ssl: dict[str, Any] | None = None) -> None:
        config = uvicorn.Config(
            routes.app(),
            host=host,
            port=port,
            lifespan="off",
            log_level="warning",
            access_log=False,
            **(ssl or {}),
        )
        self.server = _Server(config)
        self._task: asyncio.Task | None = None
        self.port = 0

    async def start(self) -> int:
        """Bind and serve; returns the bound port (port 0 picks a free one)."""
        self._task = asyncio.get_running_loop().create_task(self.server.serve())
        while not self.server.started:
            if self._task.done():  # uvicorn exits (SystemExit) when it cannot bind
                with contextlib.suppress(SystemExit):
                    self._task.result()
                raise OSError(f"cannot listen on {self.server.config.host}:{self.server.config.port} (HTTP)")
            await asyncio.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._task is None:
            return
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
