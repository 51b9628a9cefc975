"""The OpenAI-compatible HTTP API's application (Starlette) and `HttpFrontDoor`, which serves it with
uvicorn in the gateway's own event loop.

The endpoints are grouped by what they serve (text, audio, images, files and batches), each group a
class over the shared call plumbing (`calls.HttpCalls`) and the gateway's servicers, called in
process, not over the network. Every failure ends as OpenAI's error object (errors.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.http_api.audio import AudioRoutes
from gateway.http_api.calls import HttpCalls
from gateway.http_api.errors import HttpError
from gateway.http_api.files import FileRoutes
from gateway.http_api.images import ImageRoutes
from gateway.http_api.text import TextRoutes

log = logging.getLogger(__name__)


class OpenAIRoutes:
    """Every endpoint, over the InferenceServicer (`servicer`) and the JobsServicer (`jobs`)."""

    def __init__(self, servicer: Any, jobs: Any, max_body_bytes: int) -> None:
        calls = HttpCalls(servicer.tokens, max_body_bytes)
        self.groups = (
            TextRoutes(calls, servicer),
            AudioRoutes(calls, servicer),
            ImageRoutes(calls, servicer),
            FileRoutes(calls, jobs),
        )

    def app(self) -> Starlette:
        routes = [route for group in self.groups for route in group.routes()]
        handlers = {HttpError: _http_error, HTTPException: _http_exception, Exception: _unexpected}
        return Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]


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
