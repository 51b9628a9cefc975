"""HttpCalls: what every endpoint does around its servicer call, the same way for each.

Size limit (413) -> the bearer token, as the gRPC interceptor checks it (401) -> the body (JSON or a
multipart form) -> the servicer's RPC with an `HttpCallContext` -> its reply. A client that disconnects
before the reply ends the call's context, and the servicer's done callback cancels the request in the
engine (the response status, 499, is never read). `EventStream` sends server-sent events and closes its
source at once when the client goes away, also while no event is due.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import Response

from gateway.http_api.context import CallAborted, HttpCallContext
from gateway.http_api.errors import HttpError, bad_request, from_status
from gateway.http_api.fields import parse_body
from gateway.http_api.replies import DONE, sse

MAX_FORM_FIELDS = 64  # non-file fields of a multipart upload at most
MAX_FORM_FILES = 8  # files of one upload at most (an image edit's images)
GENERIC_TYPE = "application/octet-stream"  # an upload's type when the client does not know it


class HttpCalls:
    """The shared plumbing of the endpoints over the gateway's servicers (`tokens`: the TokenSet)."""

    def __init__(self, tokens: Any, max_body_bytes: int) -> None:
        self.tokens, self.max_body_bytes = tokens, max_body_bytes

    def context(self, request: Request) -> HttpCallContext:
        """The call's context, after the same bearer-token check the gRPC interceptor makes."""
        authorization = request.headers.get("authorization")
        if self.tokens:
            problem = self.tokens.problem([("authorization", authorization)] if authorization else [])
            if problem:
                raise HttpError(401, problem.replace("metadata", "header"), kind="authentication_error")
        return HttpCallContext(authorization)

    async def body(self, request: Request) -> bytes:
        """The whole body, at most `max_body_bytes` (413 past it, also for a body sent chunked)."""
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

    async def json(self, request: Request) -> dict[str, Any]:
        return parse_body(await self.body(request))

    async def form(self, request: Request) -> FormData:
        """A multipart/form-data body (its size limited like any body)."""
        kind = request.headers.get("content-type", "")
        if not kind.startswith("multipart/form-data"):
            raise bad_request(f"the body must be multipart/form-data, got {kind[:60] or 'no content-type'!r}")
        body = await self.body(request)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            return await Request(request.scope, replay).form(
                max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS, max_part_size=self.max_body_bytes
            )
        except MultiPartException as exc:
            raise bad_request(f"the multipart body cannot be read: {exc.message}") from None
        except HTTPException as exc:  # Starlette's own wrapping of MultiPartException
            raise bad_request(f"the multipart body cannot be read: {exc.detail}") from None

    async def unary(self, request: Request, ctx: HttpCallContext, call: Any, end: bool = True) -> Any:
        """Await a servicer call; a client that disconnects first cancels it (499, nobody reads it)."""
        task = asyncio.ensure_future(call)
        gone = asyncio.ensure_future(disconnected(request.receive))
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

    async def first(self, request: Request, ctx: HttpCallContext, chunks: AsyncIterator[Any]) -> Any:
        """A stream's first message (None if it has none): admission and validation run up to it, so
        their errors get their own status, not a 200 with an error event."""
        try:
            return await self.unary(request, ctx, _first(chunks), end=False)
        except BaseException:
            ctx.end()
            await chunks.aclose()  # type: ignore[attr-defined]
            raise


async def _first(chunks: AsyncIterator[Any]) -> Any:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None


class Upload:
    """One uploaded file of a multipart form: its name, declared content type ("" when undeclared or
    generic: the media is then recognised from its bytes, as the gRPC path does) and bytes."""

    def __init__(self, filename: str, content_type: str, data: bytes) -> None:
        self.filename, self.content_type, self.data = filename, content_type, data


async def uploads(form: FormData, key: str) -> list[Upload]:
    """Every file sent as form field `key` (also as `key[]`, as some clients name repeated files)."""
    values = [*form.getlist(key), *form.getlist(f"{key}[]")]
    out = []
    for value in values:
        if not isinstance(value, UploadFile):
            raise bad_request(f"{key} must be a file upload, not a text field", key)
        declared = value.content_type or ""
        declared = "" if declared == GENERIC_TYPE else declared  # curl's default: the bytes will tell
        out.append(Upload(value.filename or "", declared, await value.read()))
    return out


async def upload(form: FormData, key: str) -> Upload:
    """The one file sent as form field `key` (400 if missing, a text field, or more than one)."""
    files = await uploads(form, key)
    if len(files) != 1:
        raise bad_request(f"{key} is required: one file, sent as multipart form field {key!r}", key)
    return files[0]


def text_field(form: FormData, key: str, default: str | None = None) -> str | None:
    """A multipart text field (400 if a file was sent in its place)."""
    value = form.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise bad_request(f"{key} must be a text field, not a file", key)
    return value


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
        gone = asyncio.ensure_future(disconnected(receive))
        try:
            await asyncio.wait({sending, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sending, gone):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sending
            await self.frames.aclose()  # type: ignore[attr-defined]

    async def _send_all(self, send: Any) -> None:
        async for frame in self.frames:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def event_frames(
    chunks: Any, first: Any, ctx: HttpCallContext, frames: Callable[[Any], Iterable[bytes]]
) -> AsyncIterator[bytes]:
    """A stream's SSE frames: `frames(message)` for `first` (if any) and each message after it, then
    `data: [DONE]`; an error after the first message is an `error` event before it. The call ends (its
    context and the servicer's stream) however the frames stop being read."""
    try:
        if first is not None:
            for frame in frames(first):
                yield frame
        async for chunk in chunks:
            for frame in frames(chunk):
                yield frame
        yield DONE
    except CallAborted as exc:
        yield sse(from_status(exc.code, exc.message).body())
        yield DONE
    finally:
        ctx.end()
        await chunks.aclose()


async def disconnected(receive: Any) -> None:
    """Returns once the client has gone (after the body was read, receive() waits for that)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def number_field(form: FormData, key: str, kind: type[int] | type[float]) -> Any:
    """A multipart text field holding a number (`kind`), None if absent; 400 if it is not one."""
    text = text_field(form, key)
    if text is None or text == "":
        return None
    try:
        return kind(text)
    except ValueError:
        wanted = "an integer" if kind is int else "a number"
        raise bad_request(f"{key} must be {wanted}, got {text[:40]!r}", key) from None


def bool_field(form: FormData, key: str) -> bool | None:
    text = text_field(form, key)
    if text is None or text == "":
        return None
    if text.lower() not in ("true", "false"):
        raise bad_request(f"{key} must be true or false, got {text[:40]!r}", key)
    return text.lower() == "true"
